'use strict';
// Fakes for tests/js: a hand-driven WebSocket, a manual clock and a sessionStorage.
// Nothing here touches the network or real time.

const path = require('node:path');
const {createJPulseWS} = require(path.join(__dirname, '..', '..', 'flask_jpulse_ws', 'static', 'jpulse-ws.js'));

/** Timers that run only when the test advances time. */
class FakeClock {
  constructor() {
    this.time = 1700000000000;
    this.nextId = 1;
    this.timers = new Map(); // id -> {due, fn}
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, {due: this.time + Math.max(0, ms || 0), fn});
    return id;
  }

  clearTimeout(id) {
    this.timers.delete(id);
  }

  now() {
    return this.time;
  }

  /** Move time forward by `ms`, running every timer that falls due, in order. */
  advance(ms) {
    const end = this.time + ms;
    for (;;) {
      let nextId = null;
      let next = null;
      for (const [id, timer] of this.timers) {
        if (timer.due <= end && (next === null || timer.due < next.due)) {
          nextId = id;
          next = timer;
        }
      }
      if (next === null) break;
      this.timers.delete(nextId);
      this.time = next.due;
      next.fn();
    }
    this.time = end;
  }
}

/** A WebSocket the test drives: it records what the client does and replays server events. */
function makeFakeWebSocketClass() {
  class FakeWebSocket {
    constructor(url) {
      this.url = url;
      this.readyState = 0; // CONNECTING
      this.sent = [];
      this.closeCalls = [];
      this.onopen = null;
      this.onmessage = null;
      this.onclose = null;
      this.onerror = null;
      FakeWebSocket.instances.push(this);
    }

    send(text) {
      if (this.readyState !== 1) throw new Error('InvalidStateError: socket not open');
      this.sent.push(text);
    }

    close(code, reason) {
      this.closeCalls.push({code, reason});
      if (this.readyState < 2) this.readyState = 2; // CLOSING; the test decides if onclose comes
    }

    // ---- driven by tests ----

    get query() {
      return new URL(this.url).searchParams;
    }

    sentFrames() {
      return this.sent.map((text) => JSON.parse(text));
    }

    serverOpen() {
      this.readyState = 1;
      if (this.onopen) this.onopen({});
    }

    serverSend(frame) {
      if (this.onmessage) this.onmessage({data: typeof frame === 'string' ? frame : JSON.stringify(frame)});
    }

    serverWelcome(clientId, limits, resumeToken) {
      if (this.readyState === 0) this.serverOpen();
      const data = {clientId: clientId || this.query.get('uuid'), namespace: '/api/1/ws/test', limits: limits || {maxSize: 65536, interval: 1000, maxMessages: 50}};
      if (resumeToken !== undefined) data.resumeToken = resumeToken;
      this.serverSend({
        success: true,
        data: {
          type: 'connected',
          data: data,
          ctx: {username: ''},
        },
      });
    }

    serverClose(code, reason) {
      this.readyState = 3;
      if (this.onclose) this.onclose({code, reason: reason || '', wasClean: code !== 1006});
    }
  }
  FakeWebSocket.instances = [];
  return FakeWebSocket;
}

class FakeStorage {
  constructor() {
    this.items = new Map();
  }

  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }

  setItem(key, value) {
    this.items.set(key, String(value));
  }

  removeItem(key) {
    this.items.delete(key);
  }
}

class ThrowingStorage {
  getItem() {
    throw new Error('SecurityError: storage disabled');
  }

  setItem() {
    throw new Error('SecurityError: storage disabled');
  }

  removeItem() {
    throw new Error('SecurityError: storage disabled');
  }
}

/** Deterministic crypto.randomUUID: ...-000000000001, -000000000002, ... */
function makeSequentialCrypto() {
  let n = 0;
  return {
    randomUUID() {
      n += 1;
      return '00000000-0000-4000-8000-' + String(n).padStart(12, '0');
    },
  };
}

function makeRecordingConsole() {
  const calls = [];
  const record = (level) => (...args) => calls.push({level, text: args.join(' ')});
  return {calls, log: record('log'), info: record('info'), warn: record('warn'), error: record('error'), debug: record('debug')};
}

/**
 * A fresh client module (own registry) with every global faked.
 * Returns {ws, clock, WS, storage, console, errors, sockets(), last(), env}.
 */
function setup(overrides = {}) {
  const clock = new FakeClock();
  const WS = makeFakeWebSocketClass();
  const storage = overrides.sessionStorage || new FakeStorage();
  const fakeConsole = makeRecordingConsole();
  const errors = [];
  const env = Object.assign(
    {
      WebSocket: WS,
      sessionStorage: storage,
      location: {protocol: 'http:', host: 'example.test:5000'},
      setTimeout: clock.setTimeout.bind(clock),
      clearTimeout: clock.clearTimeout.bind(clock),
      random: () => 0, // no jitter unless a test asks for it
      now: clock.now.bind(clock),
      crypto: makeSequentialCrypto(),
      console: fakeConsole,
      reportError: (err) => errors.push(err),
    },
    overrides,
  );
  const ws = createJPulseWS(env);
  return {
    ws,
    env,
    clock,
    WS,
    storage,
    console: fakeConsole,
    errors,
    sockets: () => WS.instances,
    last: () => WS.instances[WS.instances.length - 1],
  };
}

/** Connect and complete the handshake; returns the handle and its socket. */
function connected(t, path = '/api/1/ws/test', options = {}, limits) {
  const handle = t.ws.connect(path, options);
  const sock = t.last();
  sock.serverWelcome(undefined, limits);
  return {handle, sock};
}

/** Records status changes as "old->new" strings. */
function watchStatus(handle) {
  const seen = [];
  handle.onStatusChange((now, old) => seen.push(old + '->' + now));
  return seen;
}

module.exports = {
  createJPulseWS,
  FakeClock,
  FakeStorage,
  ThrowingStorage,
  makeFakeWebSocketClass,
  makeSequentialCrypto,
  setup,
  connected,
  watchStatus,
};
