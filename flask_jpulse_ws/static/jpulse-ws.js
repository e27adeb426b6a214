/*!
 * jpulse-ws.js - browser client of flask-jpulse-ws (no build step, ES2017).
 *
 *   const chat = jPulse.ws.connect('/api/1/ws/chat');
 *   chat.onStatusChange((status, old) => ...).onMessage((frame) => ...);
 *   chat.send({type: 'say', text: 'hi'});                 // -> true / false
 *   const reply = await chat.request({type: 'get-state'}); // always resolves
 *
 * The wire protocol and the close-code table live in docs (protocol.md, sections 3, 4, 6).
 * In node, `require()` returns {createJPulseWS}, a factory taking injectable globals
 * (WebSocket, sessionStorage, location, setTimeout, clearTimeout, random, now, crypto,
 * console, reportError) so the tests can drive sockets and time by hand.
 */
(function (root, createJPulseWS) {
  'use strict';
  if (typeof module === 'object' && module && module.exports) {
    module.exports = {createJPulseWS: createJPulseWS};
  }
  if (!root || typeof root.WebSocket !== 'function' || !root.location) return; // not a page
  const jPulse = root.jPulse || (root.jPulse = {}); // keep whatever else the page put there
  if (!jPulse.ws) jPulse.ws = createJPulseWS(browserEnv(root)); // loaded twice: keep one registry

  function browserEnv(win) {
    let storage = null;
    try {
      storage = win.sessionStorage; // the getter throws in sandboxed frames
    } catch (err) {
      storage = null;
    }
    return {
      WebSocket: win.WebSocket,
      sessionStorage: storage,
      location: win.location,
      setTimeout: win.setTimeout.bind(win),
      clearTimeout: win.clearTimeout.bind(win),
      random: Math.random,
      now: Date.now,
      crypto: win.crypto,
      console: win.console,
      reportError: typeof win.reportError === 'function' ? win.reportError.bind(win) : null,
    };
  }
})(typeof window !== 'undefined' ? window : globalThis, function createJPulseWS(env) {
  'use strict';

  const OPEN = 1; // WebSocket.OPEN, spelled out so fakes need no static constants
  const STORAGE_KEY = 'jPulse.ws.clientUUID';
  const TOKEN_KEY = 'jPulse.ws.resumeToken'; // the secret that lets this tab keep its id
  const TOKEN_RE = /^[A-Za-z0-9_-]{1,128}$/;
  const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
  // Delays land in (0.8 d, d]: clients dropped together come back spread out, and never
  // later than the documented backoff.
  const JITTER = 0.2;
  // The server may still be writing a reply when we give up on it; remember that many
  // timed-out ids so a late reply is dropped instead of looking like a server request.
  const EXPIRED_MEMORY = 64;
  const HANDSHAKE_FLOOR_MS = 10000;

  const defaults = {
    reconnectBaseInterval: 5000, // first retry; attempt k waits base * k ...
    reconnectMaxInterval: 30000, // ... capped here (the seed's 5, 10, ... 30 s)
    maxReconnectAttempts: 10, // failed attempts in a row before giving up
    pingInterval: 30000, // app-level _ping while connected; 0 turns it off
    pongTimeout: 5000, // a _pong must follow each _ping within this
    requestTimeoutMs: 10000, // request() resolves REQUEST_TIMEOUT after this
  };

  const registry = new Map(); // path -> live handle
  const out = env.console || console;
  const report = env.reportError || ((err) => out.error(err));
  const setTimer = env.setTimeout || setTimeout;
  const clearTimer = env.clearTimeout || clearTimeout;
  const random = env.random || Math.random;
  const now = env.now || Date.now;
  const ids = clientIdStore(env.sessionStorage);

  // ---- ids --------------------------------------------------------------------------

  /** A lowercase canonical UUID v4 from the best source the page has. */
  function newUuid() {
    const c = env.crypto;
    if (c && typeof c.randomUUID === 'function') return c.randomUUID(); // secure contexts only
    const bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === 'function') {
      c.getRandomValues(bytes);
    } else {
      // No CSPRNG at all: the server never trusts the id for identity, so this only
      // risks a collision, which it answers with a fresh id.
      for (let i = 0; i < 16; i++) bytes[i] = Math.floor(random() * 256);
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join('-');
  }

  /**
   * The tab's client id, shared by all namespaces, and its resume token (the server keeps
   * an id only for a client that presents the token the welcome gave with it: an id is
   * public, the token is not). sessionStorage, not localStorage (the seed's choice): it
   * survives reloads but is per tab; one id shared by every tab of the origin would make
   * the tabs replace each other over and over (close 4409). Storage may be missing or
   * throw (privacy modes, sandboxed frames): memory then keeps them.
   */
  function clientIdStore(storage) {
    let memory = null;
    let memoryToken = null;
    function read(key, pattern) {
      try {
        const stored = storage ? storage.getItem(key) : null;
        return typeof stored === 'string' && pattern.test(stored) ? stored : null;
      } catch (err) {
        return null;
      }
    }
    function write(key, value) {
      try {
        if (!storage) return;
        if (value) storage.setItem(key, value);
        else if (typeof storage.removeItem === 'function') storage.removeItem(key);
        else storage.setItem(key, ''); // '' is no token
      } catch (err) {
        // quota or privacy mode: memory is enough for this page's life
      }
    }
    /** Keep `id` and its token (none: the server will not keep this id). */
    function set(id, token) {
      memory = id;
      memoryToken = token || null;
      write(STORAGE_KEY, id);
      write(TOKEN_KEY, memoryToken);
      return id;
    }
    function get() {
      const stored = read(STORAGE_KEY, UUID_RE);
      if (stored) return stored;
      return memory || set(newUuid(), null);
    }
    /** The token of the id `get()` returns, or null. */
    function token() {
      if (read(STORAGE_KEY, UUID_RE)) return read(TOKEN_KEY, TOKEN_RE);
      return memoryToken;
    }
    return {
      get: get,
      token: token,
      set: set,
      renew: () => set(newUuid(), null),
    };
  }

  // ---- helpers ----------------------------------------------------------------------

  /** Bytes of `text` in UTF-8, the unit of the server's maxSize. */
  function utf8Length(text) {
    let n = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c <= 0xdbff && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
        n += 4; // a surrogate pair is one 4-byte code point
        i++;
      } else n += 3;
    }
    return n;
  }

  /** What a close code asks of the client (protocol.md section 3). */
  function closeAction(code) {
    if (code === 4401 || code === 4403) return 'auth';
    if (code === 4409) return 'replaced';
    if (code === 4529) return 'full';
    if (code >= 4000 && code <= 4499) return 'stop'; // 4404 and application refusals
    return 'retry'; // 1000/1005 we did not ask for, 1001, 1006, 1008, 1009, 1011, 4503, 4500-4999
  }

  function failure(code, error, extra) {
    return Object.assign({success: false, code: code, error: error}, extra);
  }

  /** `list` if it is an array, else an empty one (for frames from a newer server). */
  function arrayOf(list) {
    return Array.isArray(list) ? list : [];
  }

  function isMember(m) {
    return Boolean(m) && typeof m === 'object' && typeof m.clientId === 'string';
  }

  /**
   * Apply one `_presence` batch to a member map (clientId -> member), in the server's
   * order: left, then joined, then updated. A client id may briefly have two connections
   * (it moved to another server process while the old socket lingers): the map keeps the
   * newest, and a `left` only removes the very connection that left.
   */
  function applyPresence(members, batch) {
    for (const m of arrayOf(batch.left)) {
      const held = isMember(m) ? members.get(m.clientId) : null;
      if (held && held.connectedAt === m.connectedAt) members.delete(m.clientId);
    }
    for (const m of arrayOf(batch.joined).concat(arrayOf(batch.updated))) {
      if (!isMember(m)) continue;
      const held = members.get(m.clientId);
      if (!held || !(String(held.connectedAt) > String(m.connectedAt))) members.set(m.clientId, m);
    }
    return members;
  }

  /** The `type` of a success frame, or undefined. */
  function frameType(frame) {
    const data = frame.success === true ? frame.data : null;
    return data && typeof data === 'object' ? data.type : undefined;
  }

  function callEach(callbacks, args) {
    for (const cb of callbacks.slice()) {
      try {
        cb.apply(null, args);
      } catch (err) {
        report(err); // one broken callback must not starve the others
      }
    }
  }

  // ---- one connection ---------------------------------------------------------------

  function createHandle(path, options) {
    const opts = Object.assign({}, defaults, options);
    const messageCallbacks = [];
    const statusCallbacks = [];
    const resyncCallbacks = [];
    const presenceCallbacks = [];
    const pending = new Map(); // requestId -> {resolve, timer}
    const expired = new Set(); // requestIds we stopped waiting for
    const timers = {reconnect: null, handshake: null, ping: null, pong: null};

    let status = 'connecting'; // set before any callback can exist, so never announced
    let ws = null;
    let clientId = null;
    let resumeToken = null; // sent with clientId: without it the server gives a fresh id
    let limits = null;
    let attempts = 0; // failed attempts since the last welcome
    let welcomedBefore = false; // has this handle ever been connected?
    let welcomedThisSocket = false;
    let resyncReason = null; // why the next welcome should fire onResync, if not 'reconnect'
    // Missed-message recovery (namespaces with history): the (epoch, offset) of the last
    // frame delivered here; buildUrl() asks the server to replay from it.
    let resumePosition = null;
    let sentSince = false; // this socket asked for a replay: onResync waits for _recovered
    let welcomePosition = null;
    // Presence (namespaces declared with presence=True, announced in the welcome): the
    // member map, loaded after each welcome and kept in step by `_presence` batches.
    let members = new Map(); // clientId -> {clientId, username, connectedAt, info}
    let presenceLoad = null; // {buffer} while the member list is being fetched
    let presenceOn = false; // the last welcome said this namespace has presence

    const handle = {
      path: path,
      send: send,
      request: request,
      reply: reply,
      replyError: replyError,
      onMessage: (cb) => addCallback(messageCallbacks, cb),
      onStatusChange: (cb) => addCallback(statusCallbacks, cb),
      onResync: (cb) => addCallback(resyncCallbacks, cb),
      onPresence: (cb) => addCallback(presenceCallbacks, cb),
      presence: presence,
      getPresence: getPresence,
      getStatus: () => status,
      isConnected: () => status === 'connected',
      getClientId: () => clientId,
      getLimits: () => limits,
      disconnect: disconnect,
      reconnect: reconnect,
    };

    function addCallback(list, cb) {
      if (typeof cb !== 'function') throw new TypeError('jPulse.ws: callback must be a function');
      list.push(cb);
      return handle;
    }

    // ---- status and registry ----

    function setStatus(next) {
      if (next === status) return;
      const old = status;
      status = next;
      callEach(statusCallbacks, [next, old]);
    }

    function register() {
      if (!registry.has(path)) registry.set(path, handle);
    }

    function unregister() {
      if (registry.get(path) === handle) registry.delete(path);
    }

    /** Stop for good (until reconnect()): a dead handle leaves the registry. */
    function end(finalStatus) {
      stopTimers();
      unregister(); // first, so a status callback can connect() the path afresh
      setStatus(finalStatus);
    }

    // ---- timers ----

    function startTimer(name, ms, fn) {
      stopTimer(name);
      timers[name] = setTimer(() => {
        timers[name] = null;
        fn();
      }, ms);
    }

    function stopTimer(name) {
      if (timers[name] !== null) clearTimer(timers[name]);
      timers[name] = null;
    }

    function stopTimers() {
      Object.keys(timers).forEach(stopTimer);
    }

    // ---- socket lifecycle ----

    function buildUrl() {
      const loc = env.location;
      const scheme = loc.protocol === 'https:' ? 'wss://' : 'ws://';
      let query = 'uuid=' + encodeURIComponent(clientId);
      if (resumeToken) query += '&resume=' + encodeURIComponent(resumeToken);
      sentSince = Boolean(resumePosition);
      if (sentSince) {
        query += '&since=' + encodeURIComponent(resumePosition.epoch + ':' + resumePosition.offset);
      }
      return scheme + loc.host + path + (path.indexOf('?') === -1 ? '?' : '&') + query;
    }

    function openSocket() {
      stopTimer('reconnect');
      welcomedThisSocket = false;
      clientId = ids.get(); // another handle of this tab may have renewed it
      resumeToken = ids.token();
      let sock;
      try {
        sock = new env.WebSocket(buildUrl());
      } catch (err) {
        report(err); // a malformed URL: retrying cannot help
        end('disconnected');
        return;
      }
      ws = sock;
      // Events of a socket we have let go of are ignored, even if one slips through.
      sock.onmessage = (event) => {
        if (sock === ws) handleText(event.data);
      };
      sock.onclose = (event) => {
        if (sock === ws) handleClose(event || {});
      };
      const handshakeMs = Math.max(HANDSHAKE_FLOOR_MS, opts.pingInterval + opts.pongTimeout);
      startTimer('handshake', handshakeMs, () => {
        abandonSocket();
        retryAfterFailure();
      });
    }

    /** Forget the current socket: its events, its timers, its pending requests. */
    function detachSocket() {
      const sock = ws;
      if (!sock) return null;
      ws = null;
      sock.onopen = sock.onmessage = sock.onclose = sock.onerror = null;
      stopTimer('handshake');
      stopTimer('ping');
      stopTimer('pong');
      failPending('CONNECTION_LOST', 'The connection closed before the reply arrived.');
      return sock;
    }

    /** Let go of a socket without waiting for its close handshake (a frozen peer never ends it). */
    function abandonSocket(code, reason) {
      const sock = detachSocket();
      if (!sock) return;
      try {
        if (code) sock.close(code, reason);
        else sock.close();
      } catch (err) {
        // already closing or closed: nothing left to do
      }
    }

    function handleClose(event) {
      const hadWelcome = welcomedThisSocket;
      detachSocket();
      switch (closeAction(event.code)) {
        case 'auth':
          return end('auth-required');
        case 'stop':
          return end('disconnected');
        case 'replaced':
          // A newer socket of this session took our id (a duplicated tab): take a new one.
          // Before any welcome it cannot be that, so it is an ordinary failure.
          return hadWelcome ? reopenAsNewClient() : retryAfterFailure();
        case 'full':
          return retryAfterFailure(opts.reconnectMaxInterval);
        default:
          return retryAfterFailure();
      }
    }

    /** Count a failed attempt and schedule the next, or give up after the last one. */
    function retryAfterFailure(fixedDelay) {
      if (attempts >= opts.maxReconnectAttempts) return end('disconnected');
      attempts += 1;
      const delay = fixedDelay !== undefined ? fixedDelay : Math.min(opts.reconnectBaseInterval * attempts, opts.reconnectMaxInterval);
      startTimer('reconnect', delay * (1 - JITTER * random()), openSocket);
      setStatus('reconnecting');
    }

    function reopenAsNewClient() {
      ids.renew();
      resyncReason = 'replaced';
      openSocket();
      if (ws) setStatus('reconnecting');
    }

    function handleWelcome(info) {
      stopTimer('handshake');
      if (typeof info.clientId === 'string' && info.clientId) {
        const token = typeof info.resumeToken === 'string' && TOKEN_RE.test(info.resumeToken) ? info.resumeToken : null;
        clientId = ids.set(info.clientId, token);
      }
      limits = info.limits && typeof info.limits === 'object' ? info.limits : null;
      attempts = 0;
      welcomedThisSocket = true;
      // Fire onResync only once we receive again: state fetched earlier could miss updates.
      // With history, a replay was asked for: _recovered says whether a resync is needed.
      welcomePosition = typeof info.epoch === 'string' && typeof info.offset === 'number'
        ? {epoch: info.epoch, offset: info.offset} : null;
      const replaying = sentSince && welcomePosition !== null;
      if (!replaying) resumePosition = welcomePosition;
      const resync = replaying ? null : resyncReason || (welcomedBefore ? 'reconnect' : null);
      resyncReason = null;
      welcomedBefore = true;
      startHeartbeat();
      setStatus('connected');
      if (resync) callEach(resyncCallbacks, [{reason: resync}]);
      presenceOn = info.presence === true;
      if (presenceOn && ws && status === 'connected') loadPresence();
    }

    // ---- missed-message recovery ----

    /** True for a frame past the last position seen here (and remember it). */
    function isNew(frame) {
      const last = resumePosition;
      if (last && last.epoch === frame.epoch && frame.offset <= last.offset) return false;
      resumePosition = {epoch: frame.epoch, offset: frame.offset};
      return true;
    }

    function handleRecovered(result) {
      if (result.recovered === true) return; // every missed frame came: nothing to refetch
      resumePosition = welcomePosition; // start again from the stream's current position
      callEach(resyncCallbacks, [{reason: 'recovery-failed'}]);
    }

    // ---- presence ----

    /** Ask the server who is here: resolves to the reply ({success, data: {members, stats}}). */
    function presence(requestOptions) {
      return request({type: '_presence'}, requestOptions);
    }

    function getPresence() {
      return Array.from(members.values());
    }

    /** Fetch the member list; batches that arrive meanwhile are applied after it. */
    function loadPresence() {
      const load = {buffer: []};
      presenceLoad = load;
      presence().then((reply) => {
        if (presenceLoad !== load) return; // a newer load (reconnect, resync) took over
        presenceLoad = null;
        if (reply && reply.success === true && reply.data && typeof reply.data === 'object') {
          members = new Map();
          applyPresence(members, {joined: reply.data.members});
          load.buffer.forEach((batch) => applyPresence(members, batch));
          callEach(presenceCallbacks, [{joined: [], left: [], updated: [], members: getPresence(), snapshot: true}]);
        } else {
          load.buffer.forEach(handlePresence); // no list (lost or timed out): keep the events
        }
      });
    }

    function handlePresence(batch) {
      if (!batch || typeof batch !== 'object') return;
      if (presenceLoad) return presenceLoad.buffer.push(batch);
      applyPresence(members, batch);
      const event = {joined: arrayOf(batch.joined), left: arrayOf(batch.left), updated: arrayOf(batch.updated), members: getPresence()};
      callEach(presenceCallbacks, [event]);
    }

    // ---- heartbeat: detects a dead or frozen server the TCP stack would not notice ----

    function startHeartbeat() {
      if (opts.pingInterval > 0) startTimer('ping', opts.pingInterval, sendPing);
    }

    function sendPing() {
      if (!transmit(JSON.stringify({type: '_ping', t: now()}))) return;
      startTimer('pong', opts.pongTimeout, () => {
        abandonSocket();
        retryAfterFailure();
      });
    }

    function handlePong() {
      if (timers.pong === null) return; // unsolicited: keep the planned ping on time
      stopTimer('pong');
      startHeartbeat();
    }

    // ---- inbound ----

    function handleText(text) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (err) {
        return; // not a frame of this protocol
      }
      if (frame && typeof frame === 'object') route(frame);
    }

    function route(frame) {
      if (typeof frame.requestId === 'string') {
        if (pending.has(frame.requestId)) return settle(frame.requestId, frame);
        if (expired.has(frame.requestId)) return; // too late: its request() already resolved
      }
      if (frame.success === false && frame.code === 'SESSION_EXPIRED') return; // close 4401 follows
      const type = frameType(frame);
      if (type === 'connected' && !welcomedThisSocket) return handleWelcome(frame.data.data || {});
      if (type === '_pong') return handlePong();
      if (type === '_resync') {
        if (presenceOn) loadPresence(); // presence events may have been missed too
        return callEach(resyncCallbacks, [{reason: (frame.data.data || {}).reason}]);
      }
      if (type === '_presence') return handlePresence(frame.data.data);
      if (type === '_recovered') return handleRecovered(frame.data.data || {});
      if (typeof frame.offset === 'number' && typeof frame.epoch === 'string' && !isNew(frame)) {
        return; // a replay already delivered it
      }
      // The '_' prefix belongs to the framework (_recovered, _presence, later ones): a newer
      // server's frames must not surprise an app written for this client.
      if (typeof type === 'string' && type.charAt(0) === '_') return;
      callEach(messageCallbacks, [frame]);
    }

    // ---- outbound ----

    /** Put a text frame on the wire if the handle is connected; false otherwise. */
    function transmit(text) {
      if (status !== 'connected' || !ws || ws.readyState !== OPEN) return false;
      ws.send(text);
      return true;
    }

    function tooLarge(text) {
      const size = utf8Length(text);
      const limit = limits && limits.maxSize;
      return limit > 0 && size > limit ? {size: size, limit: limit} : null;
    }

    function send(data) {
      const text = JSON.stringify(data); // a circular structure throws to the caller
      if (typeof text !== 'string') throw new TypeError('jPulse.ws: send() takes a JSON value, got ' + typeof data);
      const over = tooLarge(text);
      if (over) {
        out.warn('jPulse.ws: message not sent, ' + over.size + ' bytes > maxSize ' + over.limit + ' (' + path + ')');
        return false;
      }
      if (transmit(text)) return true;
      out.warn('jPulse.ws: message not sent, not connected (' + path + ')');
      return false;
    }

    function request(data, requestOptions) {
      const timeoutMs = (requestOptions && requestOptions.timeoutMs) || opts.requestTimeoutMs;
      return new Promise((resolve) => {
        if (status !== 'connected') {
          return resolve(failure('NOT_CONNECTED', 'Not connected: the request was not sent.'));
        }
        const requestId = newUuid();
        let text;
        try {
          text = JSON.stringify(Object.assign({}, data, {requestId: requestId}));
        } catch (err) {
          return resolve(failure('INVALID_MESSAGE', 'The request cannot be encoded as JSON: ' + err.message, {requestId: requestId}));
        }
        const over = tooLarge(text);
        if (over) {
          const error = 'The request is ' + over.size + ' bytes, over the limit of ' + over.limit + '.';
          return resolve(failure('MESSAGE_TOO_LARGE', error, {requestId: requestId, details: over}));
        }
        const timer = setTimer(() => {
          rememberExpired(requestId);
          settle(requestId, failure('REQUEST_TIMEOUT', 'No reply within ' + timeoutMs + ' ms.', {requestId: requestId}));
        }, timeoutMs);
        pending.set(requestId, {resolve: resolve, timer: timer});
        if (!transmit(text)) {
          settle(requestId, failure('NOT_CONNECTED', 'Not connected: the request was not sent.', {requestId: requestId}));
        }
      });
    }

    function settle(requestId, result) {
      const entry = pending.get(requestId);
      if (!entry) return;
      pending.delete(requestId);
      clearTimer(entry.timer);
      entry.resolve(result);
    }

    function failPending(code, error) {
      for (const requestId of Array.from(pending.keys())) {
        settle(requestId, failure(code, error, {requestId: requestId}));
      }
    }

    function rememberExpired(requestId) {
      expired.add(requestId);
      if (expired.size > EXPIRED_MEMORY) expired.delete(expired.values().next().value);
    }

    /** Answer a server request (a frame carrying requestId) with `data`. */
    function reply(message, data) {
      if (!message || typeof message.requestId !== 'string') return false;
      return send(Object.assign({}, data, {requestId: message.requestId}));
    }

    /** Answer a server request with an error. */
    function replyError(message, error, code) {
      if (!message || typeof message.requestId !== 'string') return false;
      return send({success: false, error: String(error), code: code === undefined ? 'ERROR' : code, requestId: message.requestId});
    }

    // ---- app controls ----

    function disconnect() {
      abandonSocket(1000, 'Client disconnected');
      end('disconnected');
    }

    /** Start over from attempt 0, also after disconnected or auth-required. */
    function reconnect() {
      abandonSocket(1000, 'Client reconnecting');
      stopTimers();
      attempts = 0;
      register();
      openSocket();
      if (ws) setStatus(welcomedBefore ? 'reconnecting' : 'connecting');
    }

    register();
    openSocket();
    return handle;
  }

  // ---- module API -------------------------------------------------------------------

  function connect(path, options) {
    if (typeof path !== 'string' || path.charAt(0) !== '/') {
      throw new TypeError('jPulse.ws.connect: path must start with "/", e.g. "/api/1/ws/chat"');
    }
    return registry.get(path) || createHandle(path, options);
  }

  /** Change the defaults of later connect() calls; returns the resulting defaults. */
  function configure(values) {
    Object.keys(defaults).forEach((key) => {
      if (values && values[key] !== undefined) defaults[key] = values[key];
    });
    return Object.assign({}, defaults);
  }

  return {
    connect: connect,
    configure: configure,
    getConnections: () => Array.from(registry.keys()),
  };
});
