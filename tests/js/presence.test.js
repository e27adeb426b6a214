'use strict';
// Presence in the browser client: the member map, loaded after the welcome and kept in
// step by `_presence` batches. Run: node --test tests/js/

const {describe, test} = require('node:test');
const assert = require('node:assert/strict');
const {setup} = require('./fakes');

const flush = () => new Promise((resolve) => setImmediate(resolve));
const member = (clientId, connectedAt = '2024-01-01T00:00:00.000Z', extra = {}) =>
  Object.assign({clientId, username: 'u-' + clientId, connectedAt, info: {}}, extra);
const batch = (data) => ({success: true, data: {type: '_presence', data}});

/** Connect to a presence namespace: the welcome carries presence: true. */
function presenceConnected(t, path = '/api/1/ws/room') {
  const handle = t.ws.connect(path);
  const sock = t.last();
  sock.serverOpen();
  sock.serverSend({
    success: true,
    data: {type: 'connected', data: {clientId: sock.query.get('uuid'), namespace: path, presence: true, limits: {maxSize: 65536}}, ctx: {username: ''}},
  });
  return {handle, sock};
}

/** The `_presence` request the client sent last, to answer it. */
function lastPresenceRequest(sock) {
  const sent = sock.sentFrames().filter((f) => f.type === '_presence');
  return sent[sent.length - 1];
}

function answer(sock, request, members) {
  sock.serverSend({success: true, data: {members, stats: {clients: members.length, users: members.length}}, requestId: request.requestId});
}

const ids = (handle) => handle.getPresence().map((m) => m.clientId).sort();

describe('presence', () => {
  test('the member list is fetched after a welcome that announces presence', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    const events = [];
    handle.onPresence((e) => events.push(e));
    const req = lastPresenceRequest(sock);
    assert.ok(req && typeof req.requestId === 'string');
    answer(sock, req, [member('a'), member('b')]);
    await flush();
    assert.deepEqual(ids(handle), ['a', 'b']);
    assert.equal(events.length, 1);
    assert.equal(events[0].snapshot, true);
    assert.deepEqual(events[0].members.map((m) => m.clientId), ['a', 'b']);
  });

  test('no presence request without the welcome flag', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/plain');
    t.last().serverWelcome();
    assert.equal(lastPresenceRequest(t.last()), undefined);
  });

  test('batches update the map: left first, then joined, then updated', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    answer(sock, lastPresenceRequest(sock), [member('a'), member('b')]);
    await flush();
    const events = [];
    handle.onPresence((e) => events.push(e));
    sock.serverSend(batch({joined: [member('c')], left: [member('a')]}));
    assert.deepEqual(ids(handle), ['b', 'c']);
    sock.serverSend(batch({joined: [], left: [], updated: [member('b', undefined, {info: {away: true}})]}));
    assert.deepEqual(handle.getPresence().find((m) => m.clientId === 'b').info, {away: true});
    assert.equal(events.length, 2);
    assert.deepEqual(events[0].joined.map((m) => m.clientId), ['c']);
    assert.deepEqual(events[0].left.map((m) => m.clientId), ['a']);
    assert.deepEqual(events[0].members.map((m) => m.clientId).sort(), ['b', 'c']);
    assert.deepEqual(events[1].updated.map((m) => m.clientId), ['b']);
  });

  test('_presence frames never reach onMessage', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    const messages = [];
    handle.onMessage((f) => messages.push(f));
    sock.serverSend(batch({joined: [member('x')], left: []}));
    assert.equal(messages.length, 0);
  });

  test('batches that arrive while the list loads are applied after it', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    const req = lastPresenceRequest(sock);
    // The server read the list before 'a' left, but the leave arrives first.
    sock.serverSend(batch({joined: [], left: [member('a')]}));
    sock.serverSend(batch({joined: [member('c')], left: []}));
    answer(sock, req, [member('a'), member('b')]);
    await flush();
    assert.deepEqual(ids(handle), ['b', 'c']);
  });

  test('a lingering old connection leaving does not remove the reconnected client', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    answer(sock, lastPresenceRequest(sock), [member('a', '2024-01-01T00:00:00.000Z')]);
    await flush();
    sock.serverSend(batch({joined: [member('a', '2024-01-01T00:00:09.000Z')], left: []}));
    sock.serverSend(batch({joined: [], left: [member('a', '2024-01-01T00:00:00.000Z')]}));
    assert.deepEqual(ids(handle), ['a']);
    assert.equal(handle.getPresence()[0].connectedAt, '2024-01-01T00:00:09.000Z');
    // A late join of the older connection does not replace the newer one either.
    sock.serverSend(batch({joined: [member('a', '2024-01-01T00:00:00.000Z')], left: []}));
    assert.equal(handle.getPresence()[0].connectedAt, '2024-01-01T00:00:09.000Z');
  });

  test('presence() resolves to the server reply, and NOT_CONNECTED when offline', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    const pending = handle.presence();
    const req = lastPresenceRequest(sock);
    answer(sock, req, [member('z')]);
    const reply = await pending;
    assert.equal(reply.success, true);
    assert.deepEqual(reply.data.members.map((m) => m.clientId), ['z']);
    handle.disconnect();
    assert.equal((await handle.presence()).code, 'NOT_CONNECTED');
  });

  test('a reconnect and a _resync reload the list', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    answer(sock, lastPresenceRequest(sock), [member('a'), member('b')]);
    await flush();
    sock.serverSend({success: true, data: {type: '_resync', data: {reason: 'relay-gap'}}});
    answer(sock, lastPresenceRequest(sock), [member('a')]);
    await flush();
    assert.deepEqual(ids(handle), ['a']);
    sock.serverClose(1006);
    t.clock.advance(5000);
    const next = t.last();
    assert.notEqual(next, sock);
    next.serverOpen();
    next.serverSend({success: true, data: {type: 'connected', data: {clientId: next.query.get('uuid'), presence: true}, ctx: {}}});
    answer(next, lastPresenceRequest(next), [member('a'), member('n')]);
    await flush();
    assert.deepEqual(ids(handle), ['a', 'n']);
  });

  test('a failed list load still applies the batches it held back', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    const events = [];
    handle.onPresence((e) => events.push(e));
    sock.serverSend(batch({joined: [member('c')], left: []}));
    t.clock.advance(10000); // the list request times out
    await flush();
    assert.deepEqual(ids(handle), ['c']);
    assert.equal(events.length, 1);
  });

  test('malformed batches and members are ignored', async () => {
    const t = setup();
    const {handle, sock} = presenceConnected(t);
    answer(sock, lastPresenceRequest(sock), [member('a'), 'junk', {clientId: 3}]);
    await flush();
    sock.serverSend(batch(null));
    sock.serverSend(batch({joined: 'nope', left: [null]}));
    assert.deepEqual(ids(handle), ['a']);
    assert.equal(t.errors.length, 0);
  });
});
