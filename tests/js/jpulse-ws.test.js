'use strict';
// Unit tests of the browser client (flask_jpulse_ws/static/jpulse-ws.js).
// Run: node --test tests/js/
// Each test builds a fresh client module on fake sockets and a fake clock (fakes.js).

const {describe, test} = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const {setup, connected, watchStatus, ThrowingStorage, FakeStorage, makeFakeWebSocketClass} = require('./fakes');

const SCRIPT = path.join(__dirname, '..', '..', 'flask_jpulse_ws', 'static', 'jpulse-ws.js');
const KEY = 'jPulse.ws.clientUUID';
const UUID_V4 = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const SERVER_ID = 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee';
const TOKEN_KEY = 'jPulse.ws.resumeToken';
const TOKEN = 'Jb3yN4x0kQ2m_7-vE5rT1uW8zA6cD9fG0hI2jK4lM6n'; // 43 characters, as the server's

/** Advance 1 ms at a time until a new socket appears; returns the elapsed ms (or null). */
function msUntilNextSocket(t, limit = 120000) {
  const before = t.sockets().length;
  for (let ms = 1; ms <= limit; ms++) {
    t.clock.advance(1);
    if (t.sockets().length > before) return ms;
  }
  return null;
}

/** Let promise callbacks run. */
const flush = () => new Promise((resolve) => setImmediate(resolve));

const frame = (type, data) => ({success: true, data: {type, data, ctx: {username: 'bob'}}});

describe('connect() and the URL', () => {
  test('opens ws://host/path?uuid=<id> on an http page', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat');
    assert.equal(t.last().url, 'ws://example.test:5000/api/1/ws/chat?uuid=00000000-0000-4000-8000-000000000001');
  });

  test('uses wss:// on an https page', () => {
    const t = setup({location: {protocol: 'https:', host: 'secure.test'}});
    t.ws.connect('/api/1/ws/chat');
    assert.match(t.last().url, /^wss:\/\/secure\.test\/api\/1\/ws\/chat\?uuid=/);
  });

  test('appends the uuid with & when the path already has a query', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat?room=a');
    assert.match(t.last().url, /\/api\/1\/ws\/chat\?room=a&uuid=[0-9a-f-]{36}$/);
  });

  test('a path not starting with / is a TypeError', () => {
    const t = setup();
    assert.throws(() => t.ws.connect('api/1/ws/chat'), TypeError);
    assert.throws(() => t.ws.connect(undefined), TypeError);
  });

  test('connecting twice to a live path returns the same handle', () => {
    const t = setup();
    const a = t.ws.connect('/api/1/ws/chat');
    const b = t.ws.connect('/api/1/ws/chat', {pingInterval: 1});
    assert.equal(a, b);
    assert.equal(t.sockets().length, 1);
    assert.deepEqual(t.ws.getConnections(), ['/api/1/ws/chat']);
  });

  test('getConnections() lists every registered path', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/a');
    t.ws.connect('/api/1/ws/b');
    assert.deepEqual(t.ws.getConnections(), ['/api/1/ws/a', '/api/1/ws/b']);
  });

  test('configure() changes the defaults of later connections', () => {
    const t = setup();
    const result = t.ws.configure({reconnectBaseInterval: 1000, unknownKey: 1});
    assert.equal(result.reconnectBaseInterval, 1000);
    assert.equal(result.unknownKey, undefined);
    const {sock} = connected(t);
    sock.serverClose(1006);
    assert.equal(msUntilNextSocket(t), 1000);
  });

  test('per-connection options override the defaults', () => {
    const t = setup();
    const {sock} = connected(t, '/api/1/ws/test', {reconnectBaseInterval: 2000});
    sock.serverClose(1006);
    assert.equal(msUntilNextSocket(t), 2000);
  });
});

describe('client id', () => {
  test('is generated once and stored in sessionStorage', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat');
    const id = t.last().query.get('uuid');
    assert.equal(t.storage.getItem(KEY), id);
    t.ws.connect('/api/1/ws/other');
    assert.equal(t.last().query.get('uuid'), id, 'one id for all namespaces of the tab');
  });

  test('survives a reload (a new module instance on the same storage)', () => {
    const storage = new FakeStorage();
    storage.setItem(KEY, SERVER_ID);
    const t = setup({sessionStorage: storage});
    const handle = t.ws.connect('/api/1/ws/chat');
    assert.equal(t.last().query.get('uuid'), SERVER_ID);
    assert.equal(handle.getClientId(), SERVER_ID);
  });

  test('a malformed stored id is replaced by a fresh one', () => {
    const storage = new FakeStorage();
    storage.setItem(KEY, 'not-a-uuid');
    const t = setup({sessionStorage: storage});
    t.ws.connect('/api/1/ws/chat');
    assert.match(t.last().query.get('uuid'), UUID_V4);
    assert.equal(storage.getItem(KEY), t.last().query.get('uuid'));
  });

  test('the id handed out in the welcome replaces the stored one', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    t.last().serverWelcome(SERVER_ID);
    assert.equal(handle.getClientId(), SERVER_ID);
    assert.equal(t.storage.getItem(KEY), SERVER_ID);
    t.last().serverClose(1006);
    t.clock.advance(5000);
    assert.equal(t.last().query.get('uuid'), SERVER_ID, 'the next socket reuses it');
  });

  test('the resume token of the welcome is stored and sent with the id on reconnect', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    assert.equal(t.last().query.get('resume'), null, 'no token before the first welcome');
    t.last().serverWelcome(SERVER_ID, undefined, TOKEN);
    assert.equal(t.storage.getItem(TOKEN_KEY), TOKEN);
    t.last().serverClose(1006);
    t.clock.advance(5000);
    assert.equal(t.last().query.get('uuid'), SERVER_ID);
    assert.equal(t.last().query.get('resume'), TOKEN);
    assert.equal(handle.getClientId(), SERVER_ID);
  });

  test('a stored id and token survive a reload and go with the first socket', () => {
    const storage = new FakeStorage();
    storage.setItem(KEY, SERVER_ID);
    storage.setItem(TOKEN_KEY, TOKEN);
    const t = setup({sessionStorage: storage});
    t.ws.connect('/api/1/ws/chat');
    assert.equal(t.last().query.get('uuid'), SERVER_ID);
    assert.equal(t.last().query.get('resume'), TOKEN);
  });

  test('a welcome without a token (or a malformed one) leaves none to send', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat');
    t.last().serverWelcome(SERVER_ID, undefined, TOKEN);
    t.last().serverClose(1006);
    t.clock.advance(5000);
    t.last().serverWelcome(SERVER_ID, undefined, 'not a token?');
    assert.equal(t.storage.getItem(TOKEN_KEY), null);
    t.last().serverClose(1006);
    t.clock.advance(5000);
    assert.equal(t.last().query.get('resume'), null);
  });

  test('one id and token for every namespace of the tab, once a welcome gave them', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/a');
    t.last().serverWelcome(SERVER_ID, undefined, TOKEN);
    t.ws.connect('/api/1/ws/b');
    assert.equal(t.last().query.get('uuid'), SERVER_ID);
    assert.equal(t.last().query.get('resume'), TOKEN);
  });

  test('without storage the token is kept in memory', () => {
    const t = setup({sessionStorage: new ThrowingStorage()});
    t.ws.connect('/api/1/ws/chat');
    t.last().serverWelcome(SERVER_ID, undefined, TOKEN);
    t.last().serverClose(1006);
    t.clock.advance(5000);
    assert.equal(t.last().query.get('uuid'), SERVER_ID);
    assert.equal(t.last().query.get('resume'), TOKEN);
  });

  test('a throwing sessionStorage falls back to memory', () => {
    const t = setup({sessionStorage: new ThrowingStorage()});
    t.ws.connect('/api/1/ws/a');
    const id = t.last().query.get('uuid');
    assert.match(id, UUID_V4);
    t.ws.connect('/api/1/ws/b');
    assert.equal(t.last().query.get('uuid'), id);
    assert.deepEqual(t.console.calls, []);
  });

  test('no sessionStorage at all also works', () => {
    const t = setup({sessionStorage: null});
    const {handle} = connected(t);
    assert.equal(handle.getStatus(), 'connected');
  });

  test('without randomUUID, getRandomValues makes a canonical v4', () => {
    const {webcrypto} = require('node:crypto');
    const t = setup({crypto: {getRandomValues: (a) => webcrypto.getRandomValues(a)}});
    t.ws.connect('/api/1/ws/chat');
    assert.match(t.last().query.get('uuid'), UUID_V4);
  });

  test('without any crypto, ids are still canonical v4', () => {
    const t = setup({crypto: undefined, random: () => 0.123});
    t.ws.connect('/api/1/ws/chat');
    assert.match(t.last().query.get('uuid'), UUID_V4);
  });
});

describe('status', () => {
  test('starts connecting and opening the socket is not yet connected', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const seen = watchStatus(handle);
    assert.equal(handle.getStatus(), 'connecting');
    t.last().serverOpen();
    assert.equal(handle.getStatus(), 'connecting');
    assert.equal(handle.isConnected(), false);
    assert.deepEqual(seen, []);
  });

  test('the welcome frame makes it connected', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const seen = watchStatus(handle);
    t.last().serverWelcome();
    assert.equal(handle.getStatus(), 'connected');
    assert.equal(handle.isConnected(), true);
    assert.deepEqual(seen, ['connecting->connected']);
  });

  test('connecting -> connected -> reconnecting -> connected across a drop', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const seen = watchStatus(handle);
    t.last().serverWelcome();
    t.last().serverClose(1006);
    t.clock.advance(5000);
    t.last().serverOpen();
    assert.equal(handle.getStatus(), 'reconnecting', 'still reconnecting until the welcome');
    t.last().serverWelcome();
    assert.deepEqual(seen, ['connecting->connected', 'connected->reconnecting', 'reconnecting->connected']);
  });

  test('a socket that closes before its welcome never shows connected', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const seen = watchStatus(handle);
    t.last().serverOpen();
    t.last().serverClose(1006);
    assert.deepEqual(seen, ['connecting->reconnecting']);
  });

  test('callbacks fire only on change and get (new, old)', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const calls = [];
    handle.onStatusChange((...args) => calls.push(args));
    sock.serverClose(1006);
    t.clock.advance(5000);
    t.last().serverClose(1006); // reconnecting -> reconnecting: silent
    assert.deepEqual(calls, [['reconnecting', 'connected']]);
  });

  test('a throwing status callback does not stop the others', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const seen = [];
    handle
      .onStatusChange(() => {
        throw new Error('app bug');
      })
      .onStatusChange((s) => seen.push(s));
    t.last().serverWelcome();
    assert.deepEqual(seen, ['connected']);
    assert.equal(t.errors.length, 1);
    assert.equal(t.errors[0].message, 'app bug');
  });

  test('registering a non-function callback is a TypeError', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    assert.throws(() => handle.onMessage('nope'), TypeError);
  });

  test('getLimits() is null before the welcome and the welcome limits after', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    assert.equal(handle.getLimits(), null);
    let atConnected = null;
    handle.onStatusChange(() => (atConnected = handle.getLimits()));
    t.last().serverWelcome(undefined, {maxSize: 100, interval: 1000, maxMessages: 5});
    assert.deepEqual(atConnected, {maxSize: 100, interval: 1000, maxMessages: 5}, 'already set when connected fires');
  });

  test('a normal lifecycle writes nothing to the console', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    handle.send({type: 'hi'});
    t.clock.advance(30000);
    sock.serverSend(frame('_pong', {t: 1}));
    sock.serverClose(1001);
    t.clock.advance(5000);
    t.last().serverWelcome();
    handle.disconnect();
    assert.deepEqual(t.console.calls, []);
    assert.deepEqual(t.errors, []);
  });
});

describe('backoff', () => {
  test('waits 5, 10, 15, 20, 25, 30, 30 s between failed attempts', () => {
    const t = setup();
    connected(t).sock.serverClose(1006);
    const delays = [];
    for (let i = 0; i < 7; i++) {
      delays.push(msUntilNextSocket(t));
      t.last().serverClose(1006);
    }
    assert.deepEqual(delays, [5000, 10000, 15000, 20000, 25000, 30000, 30000]);
  });

  test('jitter only shortens a delay, to no less than 80 %', () => {
    const draws = [0.999999, 0.5, 0, 0.25, 0.75, 0.999999, 0.1];
    let i = 0;
    const t = setup({random: () => draws[i++ % draws.length]});
    connected(t).sock.serverClose(1006);
    const nominal = [5000, 10000, 15000, 20000, 25000, 30000, 30000];
    const delays = [];
    for (const d of nominal) {
      const ms = msUntilNextSocket(t);
      assert.ok(ms >= 0.8 * d && ms <= d, `${ms} ms not in [${0.8 * d}, ${d}]`);
      delays.push(ms);
      t.last().serverClose(1006);
    }
    assert.ok(delays[0] < 5000, 'a high draw shortens the delay');
    assert.equal(delays[2], 15000, 'a zero draw keeps the full delay');
  });

  test('after maxReconnectAttempts failed attempts it is disconnected and stops', () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {maxReconnectAttempts: 3});
    const seen = watchStatus(handle);
    sock.serverClose(1006);
    for (let i = 0; i < 3; i++) {
      assert.notEqual(msUntilNextSocket(t), null);
      t.last().serverClose(1006);
    }
    assert.equal(handle.getStatus(), 'disconnected');
    assert.deepEqual(seen, ['connected->reconnecting', 'reconnecting->disconnected']);
    assert.equal(msUntilNextSocket(t, 300000), null, 'no further socket');
    assert.equal(t.sockets().length, 4);
  });

  test('the default gives up after 10 failed attempts', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    sock.serverClose(1006);
    for (let i = 0; i < 10; i++) {
      t.clock.advance(30000);
      t.last().serverClose(1006);
    }
    assert.equal(t.sockets().length, 11);
    assert.equal(handle.getStatus(), 'disconnected');
  });

  test('an exhausted handle leaves the registry and connect() makes a new one', () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {maxReconnectAttempts: 1});
    sock.serverClose(1006);
    t.clock.advance(5000);
    t.last().serverClose(1006);
    assert.deepEqual(t.ws.getConnections(), []);
    const fresh = t.ws.connect('/api/1/ws/test');
    assert.notEqual(fresh, handle);
    assert.equal(fresh.getStatus(), 'connecting');
  });

  test('attempts reset after each welcome', () => {
    const t = setup();
    connected(t).sock.serverClose(1006);
    t.clock.advance(5000);
    t.last().serverClose(1006);
    t.clock.advance(10000);
    t.last().serverClose(1006);
    t.clock.advance(15000);
    t.last().serverWelcome();
    t.last().serverClose(1006);
    assert.equal(msUntilNextSocket(t), 5000);
  });

  test('the initial connection failing is retried too', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    t.last().serverClose(1006);
    assert.equal(handle.getStatus(), 'reconnecting');
    assert.equal(msUntilNextSocket(t), 5000);
  });

  for (const code of [1000, 1005, 1001, 1008, 1009, 1011, 4503, 4500, 4999]) {
    test(`close ${code} from the server is retried with backoff`, () => {
      const t = setup();
      const {handle, sock} = connected(t);
      sock.serverClose(code);
      assert.equal(handle.getStatus(), 'reconnecting');
      assert.equal(msUntilNextSocket(t), 5000);
    });
  }
});

describe('close codes that stop or redirect', () => {
  for (const code of [4401, 4403]) {
    test(`${code} -> auth-required, no retry, removed from the registry`, () => {
      const t = setup();
      const {handle, sock} = connected(t);
      sock.serverClose(code, 'not allowed');
      assert.equal(handle.getStatus(), 'auth-required');
      assert.equal(msUntilNextSocket(t, 300000), null);
      assert.deepEqual(t.ws.getConnections(), []);
    });
  }

  test('4401 during the handshake is auth-required too', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/secure');
    t.last().serverOpen();
    t.last().serverClose(4401);
    assert.equal(handle.getStatus(), 'auth-required');
  });

  for (const code of [4404, 4000, 4422, 4499]) {
    test(`${code} -> disconnected, no retry`, () => {
      const t = setup();
      const {handle, sock} = connected(t);
      sock.serverClose(code);
      assert.equal(handle.getStatus(), 'disconnected');
      assert.equal(msUntilNextSocket(t, 300000), null);
      assert.deepEqual(t.ws.getConnections(), []);
    });
  }

  test('a stopped handle is replaced by connect()', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    sock.serverClose(4404);
    assert.notEqual(t.ws.connect('/api/1/ws/test'), handle);
    assert.equal(t.sockets().length, 2);
  });

  test('4409 stores a new id and reconnects at once with it', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const oldId = handle.getClientId();
    const seen = watchStatus(handle);
    sock.serverClose(4409, 'replaced');
    assert.equal(t.sockets().length, 2, 'no backoff');
    const newId = t.last().query.get('uuid');
    assert.notEqual(newId, oldId);
    assert.match(newId, UUID_V4);
    assert.equal(t.storage.getItem(KEY), newId);
    t.last().serverWelcome();
    assert.deepEqual(seen, ['connected->reconnecting', 'reconnecting->connected']);
  });

  test('4409 fires onResync once with reason replaced, after the new welcome', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const resyncs = [];
    handle.onResync((info) => resyncs.push(info));
    sock.serverClose(4409);
    assert.deepEqual(resyncs, [], 'refetching before we receive again would miss updates');
    t.last().serverWelcome();
    assert.deepEqual(resyncs, [{reason: 'replaced'}]);
  });

  test('4409 before any welcome is an ordinary failed attempt', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat');
    t.last().serverClose(4409);
    assert.equal(msUntilNextSocket(t), 5000);
  });

  test('4409 forgets the resume token with the old id', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    t.last().serverWelcome(SERVER_ID, undefined, TOKEN);
    t.last().serverClose(4409);
    assert.notEqual(handle.getClientId(), SERVER_ID);
    assert.equal(t.last().query.get('resume'), null, 'a new id has no token yet');
    assert.equal(t.storage.getItem(TOKEN_KEY), null);
  });

  test('4529 waits reconnectMaxInterval', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    sock.serverClose(4529, 'too many connections');
    assert.equal(handle.getStatus(), 'reconnecting');
    assert.equal(msUntilNextSocket(t), 30000);
  });

  test('4529 counts as an attempt', () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {maxReconnectAttempts: 2});
    sock.serverClose(4529);
    t.clock.advance(30000);
    t.last().serverClose(4529);
    t.clock.advance(30000);
    t.last().serverClose(4529);
    assert.equal(handle.getStatus(), 'disconnected');
  });
});

describe('handshake timeout', () => {
  test('no welcome within max(10 s, ping + pong) closes the socket and counts a failure', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat'); // defaults: 30 s + 5 s = 35 s
    const first = t.last();
    first.serverOpen();
    t.clock.advance(34999);
    assert.deepEqual(first.closeCalls, []);
    t.clock.advance(1);
    assert.equal(first.closeCalls.length, 1);
    assert.equal(handle.getStatus(), 'reconnecting');
    assert.equal(msUntilNextSocket(t), 5000);
  });

  test('the handshake timeout is at least 10 s', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat', {pingInterval: 200, pongTimeout: 100});
    const first = t.last();
    t.clock.advance(9999);
    assert.deepEqual(first.closeCalls, []);
    t.clock.advance(1);
    assert.equal(first.closeCalls.length, 1);
  });

  test('a late event from the timed-out socket is ignored', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat', {pingInterval: 200, pongTimeout: 100});
    const first = t.last();
    t.clock.advance(10000);
    first.serverWelcome(); // handlers were removed: nothing happens
    assert.equal(handle.getStatus(), 'reconnecting');
  });

  test('the welcome stops the handshake timer', () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {pingInterval: 0});
    t.clock.advance(60000);
    assert.equal(handle.getStatus(), 'connected');
    assert.deepEqual(sock.closeCalls, []);
  });
});

describe('heartbeat', () => {
  test('sends {type:_ping, t} every pingInterval while connected', () => {
    const t = setup();
    const {sock} = connected(t);
    t.clock.advance(29999);
    assert.deepEqual(sock.sentFrames(), []);
    t.clock.advance(1);
    assert.deepEqual(sock.sentFrames(), [{type: '_ping', t: t.clock.now()}]);
    t.clock.advance(1000);
    sock.serverSend(frame('_pong', {t: 0}));
    t.clock.advance(30000);
    assert.equal(sock.sentFrames().length, 2);
  });

  test('no ping before the welcome', () => {
    const t = setup();
    t.ws.connect('/api/1/ws/chat');
    t.last().serverOpen();
    t.clock.advance(34000);
    assert.deepEqual(t.last().sent, []);
  });

  test('no _pong within pongTimeout abandons the socket at once and reconnects', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    t.clock.advance(30000); // ping
    t.clock.advance(4999);
    assert.equal(handle.getStatus(), 'connected');
    t.clock.advance(1);
    assert.equal(handle.getStatus(), 'reconnecting');
    assert.equal(sock.closeCalls.length, 1, 'close() was called');
    assert.equal(sock.onclose, null, 'and its handlers removed: no waiting for the close handshake');
    assert.equal(msUntilNextSocket(t), 5000);
  });

  test('pingInterval 0 turns the heartbeat off', () => {
    const t = setup();
    const {sock, handle} = connected(t, '/api/1/ws/test', {pingInterval: 0});
    t.clock.advance(120000);
    assert.deepEqual(sock.sent, []);
    assert.equal(handle.getStatus(), 'connected');
  });

  test('an unsolicited _pong does not postpone the next ping', () => {
    const t = setup();
    const {sock} = connected(t);
    t.clock.advance(10000);
    sock.serverSend(frame('_pong', {t: 0}));
    t.clock.advance(20000);
    assert.equal(sock.sent.length, 1);
  });
});

describe('inbound routing', () => {
  test('app frames reach every onMessage callback as whole wire frames', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const a = [];
    const b = [];
    handle.onMessage((m) => a.push(m)).onMessage((m) => b.push(m));
    sock.serverSend(frame('chat', {text: 'hi'}));
    assert.deepEqual(a, [frame('chat', {text: 'hi'})]);
    assert.deepEqual(b, a);
  });

  test('the welcome, _pong, _resync, _presence and _recovered never reach onMessage', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const got = [];
    handle.onMessage((m) => got.push(m));
    const sock = t.last();
    sock.serverWelcome();
    for (const type of ['_pong', '_resync', '_presence', '_recovered']) sock.serverSend(frame(type, {}));
    assert.deepEqual(got, []);
  });

  test('app types ping, pong and a later connected do reach onMessage', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onMessage((m) => got.push(m.data.type));
    for (const type of ['ping', 'pong', 'connected']) sock.serverSend(frame(type, {}));
    assert.deepEqual(got, ['ping', 'pong', 'connected']);
  });

  test('error frames reach onMessage, except SESSION_EXPIRED', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onMessage((m) => got.push(m.code));
    sock.serverSend({success: false, error: 'Rate limit exceeded', code: 'RATE_LIMIT_EXCEEDED'});
    sock.serverSend({success: false, error: 'Session expired', code: 'SESSION_EXPIRED'});
    sock.serverSend({success: false, error: 'Invalid message format', code: 400});
    assert.deepEqual(got, ['RATE_LIMIT_EXCEEDED', 400]);
  });

  test('a throwing onMessage callback does not stop the others', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle
      .onMessage(() => {
        throw new Error('app bug');
      })
      .onMessage((m) => got.push(m.data.type));
    sock.serverSend(frame('chat', {}));
    assert.deepEqual(got, ['chat']);
    assert.equal(t.errors.length, 1);
  });

  test('frames that are not JSON objects are dropped silently', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onMessage((m) => got.push(m));
    sock.serverSend('not json');
    sock.serverSend('42');
    sock.serverSend('null');
    assert.deepEqual(got, []);
    assert.deepEqual(t.console.calls, []);
  });
});

describe('onResync', () => {
  test('a _resync frame calls it with the reason', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onResync((info) => got.push(info));
    sock.serverSend(frame('_resync', {reason: 'relay-gap'}));
    assert.deepEqual(got, [{reason: 'relay-gap'}]);
  });

  test('fires with reason reconnect after every welcome but the first', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    const got = [];
    handle.onResync((info) => got.push(info));
    t.last().serverWelcome();
    assert.deepEqual(got, []);
    t.last().serverClose(1006);
    t.clock.advance(5000);
    t.last().serverWelcome();
    assert.deepEqual(got, [{reason: 'reconnect'}]);
    t.last().serverClose(1001);
    t.clock.advance(5000);
    t.last().serverWelcome();
    assert.equal(got.length, 2);
  });

  test('fires after the status is connected, so the app can send from it', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    let sent = null;
    handle.onResync(() => (sent = handle.send({type: 'get-state'})));
    sock.serverClose(1006);
    t.clock.advance(5000);
    t.last().serverWelcome();
    assert.equal(sent, true);
  });
});

describe('send()', () => {
  test('sends the JSON text and returns true when connected', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    assert.equal(handle.send({type: 'chat', text: 'hi'}), true);
    assert.deepEqual(sock.sentFrames(), [{type: 'chat', text: 'hi'}]);
  });

  test('returns false before the welcome, with a warning, and queues nothing', () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    t.last().serverOpen();
    assert.equal(handle.send({type: 'chat'}), false);
    t.last().serverWelcome();
    assert.deepEqual(t.last().sent, []);
    assert.equal(t.console.calls.length, 1);
    assert.equal(t.console.calls[0].level, 'warn');
  });

  test('returns false while reconnecting and after disconnect()', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    sock.serverClose(1006);
    assert.equal(handle.send({type: 'chat'}), false);
    t.clock.advance(5000);
    t.last().serverWelcome();
    handle.disconnect();
    assert.equal(handle.send({type: 'chat'}), false);
  });

  test('returns false over maxSize, counting UTF-8 bytes, with a warning', () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {}, {maxSize: 30, interval: 1000, maxMessages: 50});
    // {"type":"x","t":"…"}: 19 bytes of JSON around the text
    assert.equal(handle.send({type: 'x', t: 'a'.repeat(11)}), true, '30 bytes: at the limit');
    assert.equal(handle.send({type: 'x', t: 'é'.repeat(6)}), false, '31 bytes although 25 characters');
    assert.equal(handle.send({type: 'x', t: '€'.repeat(4)}), false, '31 bytes: 3 per euro sign');
    assert.equal(handle.send({type: 'x', t: '😀'.repeat(3)}), false, '31 bytes: 4 per emoji');
    assert.equal(sock.sent.length, 1);
    assert.equal(t.console.calls.filter((c) => c.level === 'warn').length, 3);
    assert.match(t.console.calls[0].text, /maxSize 30/);
  });

  test('a value JSON cannot encode is a TypeError', () => {
    const t = setup();
    const {handle} = connected(t);
    assert.throws(() => handle.send(undefined), TypeError);
  });
});

describe('request()', () => {
  test('sends {...data, requestId} and resolves with the reply, which skips onMessage', async () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onMessage((m) => got.push(m));
    const promise = handle.request({type: 'get-state', room: 'a'});
    const [sent] = sock.sentFrames();
    assert.equal(sent.type, 'get-state');
    assert.equal(sent.room, 'a');
    assert.match(sent.requestId, /^[0-9a-f-]{36}$/);
    const replyFrame = {success: true, data: {count: 3}, requestId: sent.requestId};
    sock.serverSend(replyFrame);
    assert.deepEqual(await promise, replyFrame);
    assert.deepEqual(got, []);
  });

  test('an error reply from the server resolves the request', async () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const promise = handle.request({type: 'x'});
    const {requestId} = sock.sentFrames()[0];
    sock.serverSend({success: false, error: 'No reply from handler', code: 'NO_REPLY', requestId});
    assert.equal((await promise).code, 'NO_REPLY');
  });

  test('resolves REQUEST_TIMEOUT after the default 10 s', async () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {pingInterval: 0});
    let result = null;
    handle.request({type: 'slow'}).then((r) => (result = r));
    t.clock.advance(9999);
    await flush();
    assert.equal(result, null);
    t.clock.advance(1);
    await flush();
    assert.equal(result.success, false);
    assert.equal(result.code, 'REQUEST_TIMEOUT');
    assert.equal(result.requestId, sock.sentFrames()[0].requestId);
    assert.equal(typeof result.error, 'string');
  });

  test('timeoutMs overrides the default, and a late reply is dropped', async () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onMessage((m) => got.push(m));
    const promise = handle.request({type: 'slow'}, {timeoutMs: 500});
    t.clock.advance(500);
    assert.equal((await promise).code, 'REQUEST_TIMEOUT');
    sock.serverSend({success: true, data: {}, requestId: sock.sentFrames()[0].requestId});
    assert.deepEqual(got, [], 'a late reply is not mistaken for a server request');
  });

  test('resolves CONNECTION_LOST when the socket closes', async () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const promise = handle.request({type: 'x'});
    sock.serverClose(1006);
    const result = await promise;
    assert.equal(result.code, 'CONNECTION_LOST');
    assert.equal(result.success, false);
  });

  test('resolves CONNECTION_LOST on disconnect()', async () => {
    const t = setup();
    const {handle} = connected(t);
    const promise = handle.request({type: 'x'});
    handle.disconnect();
    assert.equal((await promise).code, 'CONNECTION_LOST');
  });

  test('resolves CONNECTION_LOST when the pong timeout abandons the socket', async () => {
    const t = setup();
    const {handle} = connected(t);
    t.clock.advance(30000);
    const promise = handle.request({type: 'x'}, {timeoutMs: 60000});
    t.clock.advance(5000);
    assert.equal((await promise).code, 'CONNECTION_LOST');
  });

  test('resolves NOT_CONNECTED at once when not connected, sending nothing', async () => {
    const t = setup();
    const handle = t.ws.connect('/api/1/ws/chat');
    t.last().serverOpen();
    const result = await handle.request({type: 'x'});
    assert.equal(result.code, 'NOT_CONNECTED');
    assert.equal(result.success, false);
    assert.deepEqual(t.last().sent, []);
    assert.deepEqual(t.console.calls, [], 'the result says it: no warning');
  });

  test('resolves MESSAGE_TOO_LARGE over maxSize, sending nothing', async () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {}, {maxSize: 50, interval: 1000, maxMessages: 50});
    const result = await handle.request({type: 'x', blob: 'z'.repeat(100)});
    assert.equal(result.code, 'MESSAGE_TOO_LARGE');
    assert.equal(result.details.limit, 50);
    assert.ok(result.details.size > 50);
    assert.deepEqual(sock.sent, []);
  });

  test('never rejects, even for a value JSON cannot encode', async () => {
    const t = setup();
    const {handle} = connected(t);
    const circular = {type: 'x'};
    circular.self = circular;
    const result = await handle.request(circular);
    assert.equal(result.success, false);
    assert.equal(result.code, 'INVALID_MESSAGE');
  });
});

describe('answering server requests', () => {
  const serverRequest = {success: true, data: {type: 'confirm', data: {q: 1}, ctx: {username: ''}}, requestId: 'srv-1'};

  test('a server request reaches onMessage with its requestId', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const got = [];
    handle.onMessage((m) => got.push(m));
    sock.serverSend(serverRequest);
    assert.deepEqual(got, [serverRequest]);
  });

  test('reply() sends {...data, requestId}', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    assert.equal(handle.reply(serverRequest, {type: 'confirm-reply', ok: true}), true);
    assert.deepEqual(sock.sentFrames(), [{type: 'confirm-reply', ok: true, requestId: 'srv-1'}]);
  });

  test('replyError() sends {success:false, error, code, requestId}, code ERROR by default', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    assert.equal(handle.replyError(serverRequest, 'No such item'), true);
    assert.equal(handle.replyError(serverRequest, 'Busy', 'BUSY'), true);
    assert.deepEqual(sock.sentFrames(), [
      {success: false, error: 'No such item', code: 'ERROR', requestId: 'srv-1'},
      {success: false, error: 'Busy', code: 'BUSY', requestId: 'srv-1'},
    ]);
  });

  test('both return false for a message without requestId', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    assert.equal(handle.reply(frame('chat', {}), {ok: 1}), false);
    assert.equal(handle.replyError(frame('chat', {}), 'x'), false);
    assert.equal(handle.reply(null, {}), false);
    assert.deepEqual(sock.sent, []);
  });
});

describe('disconnect() and reconnect()', () => {
  test('disconnect() closes 1000, reports disconnected and never reconnects', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    const seen = watchStatus(handle);
    handle.disconnect();
    assert.deepEqual(sock.closeCalls, [{code: 1000, reason: 'Client disconnected'}]);
    assert.deepEqual(seen, ['connected->disconnected']);
    sock.serverClose(1000); // its close event no longer matters
    assert.equal(msUntilNextSocket(t, 300000), null);
    assert.equal(handle.getStatus(), 'disconnected');
  });

  test('disconnect() removes the handle from getConnections()', () => {
    const t = setup();
    const {handle} = connected(t);
    handle.disconnect();
    assert.deepEqual(t.ws.getConnections(), []);
  });

  test('disconnect() while waiting to retry cancels the retry', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    sock.serverClose(1006);
    handle.disconnect();
    assert.equal(msUntilNextSocket(t, 300000), null);
  });

  test('reconnect() after disconnected opens a socket at once and re-registers', () => {
    const t = setup();
    const {handle} = connected(t);
    handle.disconnect();
    const seen = watchStatus(handle);
    handle.reconnect();
    assert.equal(t.sockets().length, 2);
    assert.deepEqual(t.ws.getConnections(), ['/api/1/ws/test']);
    assert.equal(t.ws.connect('/api/1/ws/test'), handle);
    t.last().serverWelcome();
    assert.deepEqual(seen, ['disconnected->reconnecting', 'reconnecting->connected']);
  });

  test('reconnect() after exhausted attempts starts again from attempt 0', () => {
    const t = setup();
    const {handle, sock} = connected(t, '/api/1/ws/test', {maxReconnectAttempts: 2});
    sock.serverClose(1006);
    t.clock.advance(5000);
    t.last().serverClose(1006);
    t.clock.advance(10000);
    t.last().serverClose(1006);
    assert.equal(handle.getStatus(), 'disconnected');
    handle.reconnect();
    t.last().serverClose(1006);
    assert.equal(msUntilNextSocket(t), 5000);
  });

  test('reconnect() after auth-required tries again (e.g. after logging in)', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    sock.serverClose(4401);
    handle.reconnect();
    t.last().serverWelcome();
    assert.equal(handle.getStatus(), 'connected');
  });

  test('reconnect() while connected replaces the socket', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    handle.reconnect();
    assert.deepEqual(sock.closeCalls, [{code: 1000, reason: 'Client reconnecting'}]);
    assert.equal(handle.getStatus(), 'reconnecting');
    t.last().serverWelcome();
    assert.equal(handle.getStatus(), 'connected');
  });

  test('a status callback may connect() the path again once a handle ended', () => {
    const t = setup();
    const {handle, sock} = connected(t);
    let replacement = null;
    handle.onStatusChange((s) => {
      if (s === 'disconnected') replacement = t.ws.connect('/api/1/ws/test');
    });
    sock.serverClose(4404);
    assert.ok(replacement && replacement !== handle);
    assert.deepEqual(t.ws.getConnections(), ['/api/1/ws/test']);
  });
});

describe('the script in a page', () => {
  function loadInPage(extra = {}) {
    const WS = makeFakeWebSocketClass();
    const win = Object.assign(
      {
        WebSocket: WS,
        location: {protocol: 'https:', host: 'app.test'},
        sessionStorage: new FakeStorage(),
        setTimeout,
        clearTimeout,
        crypto: require('node:crypto').webcrypto,
        console,
      },
      extra,
    );
    win.window = win;
    vm.runInNewContext(fs.readFileSync(SCRIPT, 'utf8'), win, {filename: SCRIPT});
    return {win, WS};
  }

  test('defines window.jPulse.ws and keeps what jPulse already held', () => {
    const existing = {version: '1.0'};
    const {win, WS} = loadInPage({jPulse: existing});
    assert.equal(win.jPulse, existing);
    assert.equal(win.jPulse.version, '1.0');
    const handle = win.jPulse.ws.connect('/api/1/ws/chat');
    assert.match(WS.instances[0].url, /^wss:\/\/app\.test\/api\/1\/ws\/chat\?uuid=/);
    handle.disconnect();
  });

  test('creates window.jPulse when missing', () => {
    const {win} = loadInPage();
    assert.equal(typeof win.jPulse.ws.connect, 'function');
    assert.equal(typeof win.jPulse.ws.getConnections, 'function');
    assert.equal(typeof win.jPulse.ws.configure, 'function');
  });

  test('a sessionStorage getter that throws does not break loading', () => {
    const WS = makeFakeWebSocketClass();
    const win = {WebSocket: WS, location: {protocol: 'http:', host: 'h'}, setTimeout, clearTimeout, console};
    Object.defineProperty(win, 'sessionStorage', {
      get() {
        throw new Error('SecurityError');
      },
    });
    win.window = win;
    vm.runInNewContext(fs.readFileSync(SCRIPT, 'utf8'), win);
    win.jPulse.ws.connect('/api/1/ws/chat').disconnect();
    assert.equal(WS.instances.length, 1);
  });

  test('the script never uses innerHTML', () => {
    assert.doesNotMatch(fs.readFileSync(SCRIPT, 'utf8'), /innerHTML/);
  });
});
