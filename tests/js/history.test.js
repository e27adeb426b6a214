'use strict';
// Missed-message recovery in the browser client: (epoch, offset) kept per handle, sent
// as ?since= when reconnecting, duplicates dropped, onResync only when recovery failed.
// Run: node --test tests/js/

const {describe, test} = require('node:test');
const assert = require('node:assert/strict');
const {setup} = require('./fakes');

const PATH = '/api/1/ws/feed';

function welcome(sock, position) {
  sock.serverOpen();
  sock.serverSend({
    success: true,
    data: {type: 'connected', data: Object.assign({clientId: sock.query.get('uuid'), namespace: PATH, limits: {maxSize: 65536}}, position || {}), ctx: {username: ''}},
  });
}

const tick = (offset, epoch = 'e1') => ({success: true, data: {type: 'tick', data: {n: offset}, ctx: {username: ''}}, offset, epoch});
const recovered = (ok, count = 0) => ({success: true, data: {type: '_recovered', data: {recovered: ok, count}}});

function reconnectAfterDrop(t) {
  t.last().serverClose(1006);
  t.clock.advance(5000); // the first retry waits reconnectBaseInterval at most
  return t.last();
}

describe('missed-message recovery', () => {
  test('the reconnect asks for a replay from the last frame seen', () => {
    const t = setup();
    t.ws.connect(PATH);
    welcome(t.last(), {epoch: 'e1', offset: 10});
    t.last().serverSend(tick(11));
    t.last().serverSend(tick(12));
    const again = reconnectAfterDrop(t);
    assert.equal(again.query.get('since'), 'e1:12');
  });

  test('a first connection asks for nothing', () => {
    const t = setup();
    t.ws.connect(PATH);
    assert.equal(t.last().query.get('since'), null);
  });

  test('replayed and live frames are delivered once, and recovery means no resync', () => {
    const t = setup();
    const handle = t.ws.connect(PATH);
    const got = [];
    const resyncs = [];
    handle.onMessage((m) => got.push(m.offset));
    handle.onResync((r) => resyncs.push(r.reason));
    welcome(t.last(), {epoch: 'e1', offset: 0});
    t.last().serverSend(tick(1));
    const again = reconnectAfterDrop(t);
    welcome(again, {epoch: 'e1', offset: 3});
    again.serverSend(tick(2));
    again.serverSend(tick(3));
    again.serverSend(recovered(true, 2));
    again.serverSend(tick(3)); // a duplicate must not reach the app
    again.serverSend(tick(4));
    assert.deepEqual(got, [1, 2, 3, 4]);
    assert.deepEqual(resyncs, []);
  });

  test('failed recovery fires onResync and restarts from the current position', () => {
    const t = setup();
    const handle = t.ws.connect(PATH);
    const resyncs = [];
    handle.onResync((r) => resyncs.push(r.reason));
    welcome(t.last(), {epoch: 'e1', offset: 5});
    const again = reconnectAfterDrop(t);
    assert.equal(again.query.get('since'), 'e1:5');
    welcome(again, {epoch: 'e2', offset: 40});
    again.serverSend(recovered(false));
    assert.deepEqual(resyncs, ['recovery-failed']);
    const third = reconnectAfterDrop(t);
    assert.equal(third.query.get('since'), 'e2:40');
  });

  test('a namespace without history resyncs after every reconnect, as before', () => {
    const t = setup();
    const handle = t.ws.connect(PATH);
    const resyncs = [];
    handle.onResync((r) => resyncs.push(r.reason));
    welcome(t.last());
    const again = reconnectAfterDrop(t);
    assert.equal(again.query.get('since'), null);
    welcome(again);
    assert.deepEqual(resyncs, ['reconnect']);
  });

  test('_recovered never reaches onMessage', () => {
    const t = setup();
    const handle = t.ws.connect(PATH);
    const got = [];
    handle.onMessage((m) => got.push(m));
    welcome(t.last(), {epoch: 'e1', offset: 0});
    t.last().serverSend(recovered(true, 0));
    assert.deepEqual(got, []);
  });
});
