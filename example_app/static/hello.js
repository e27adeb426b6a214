/*!
 * /hello-websocket/: the five demos. Everything users typed is shown with textContent,
 * never as HTML. The blocks between "<example:...>" markers are shown on the Code tab.
 */
(function () {
  'use strict';

  // ---- small helpers ----------------------------------------------------------------

  function $(selector) {
    return document.querySelector(selector);
  }

  /** An element holding `text` as text (never parsed as HTML). */
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function showStatus(handle, id) {
    const badge = document.getElementById(id);
    const show = (status) => {
      badge.textContent = status;
      badge.dataset.status = status;
    };
    show(handle.getStatus());
    handle.onStatusChange(show);
  }

  function showError(id, text) {
    document.getElementById(id).textContent = text || '';
  }

  function time(ms) {
    return new Date(ms).toLocaleTimeString();
  }

  window.hello = {}; // the live handles, for the curious (and the tests)

  // ---- tabs -------------------------------------------------------------------------

  function showTab() {
    const name = (location.hash || '#cursors').slice(1);
    const known = document.getElementById('tab-' + name) ? name : 'cursors';
    document.querySelectorAll('section.tab').forEach((s) => {
      s.hidden = s.id !== 'tab-' + known;
    });
    document.querySelectorAll('.tabs button').forEach((b) => {
      b.classList.toggle('active', b.dataset.tab === known);
      b.setAttribute('aria-selected', String(b.dataset.tab === known));
    });
  }
  document.querySelectorAll('.tabs button').forEach((b) => {
    b.addEventListener('click', () => {
      location.hash = b.dataset.tab;
    });
  });
  window.addEventListener('hashchange', showTab);
  showTab();

  // <example:cursors>
  // Emoji cursors: ephemeral, throttled to one move per 50 ms.
  const emojiWs = jPulse.ws.connect('/api/1/ws/hello-emoji');
  const area = $('#cursor-area');
  const cursors = new Map(); // cursor id -> {node, seen}
  let myEmoji = $('#emoji-picker button').dataset.emoji;
  let myCursorId = null;
  let lastSent = 0;

  area.addEventListener('mousemove', (event) => {
    const now = Date.now();
    if (now - lastSent < 50) return; // at most 20 updates a second
    lastSent = now;
    const box = area.getBoundingClientRect();
    emojiWs.send({
      type: 'cursor-move',
      emoji: myEmoji,
      x: Math.round(((event.clientX - box.left) / box.width) * 1000) / 10,
      y: Math.round(((event.clientY - box.top) / box.height) * 1000) / 10,
    });
  });

  emojiWs.onMessage((frame) => {
    if (!frame.success) return showError('cursors-error', frame.error);
    const msg = frame.data;
    const d = msg.data || {};
    if (msg.type === 'welcome') myCursorId = d.cursorId;
    else if (msg.type === 'cursor' && d.id !== myCursorId) placeCursor(d);
    else if (msg.type === 'cursor-left') removeCursor(d.id);
  });

  function placeCursor(d) {
    let c = cursors.get(d.id);
    if (!c) {
      const node = el('div', null, 'cursor');
      node.dataset.id = d.id;
      node.append(el('span', '', 'cursor-emoji'), el('span', '', 'cursor-name'));
      area.append(node);
      c = {node: node};
      cursors.set(d.id, c);
    }
    c.seen = Date.now();
    c.node.querySelector('.cursor-emoji').textContent = d.emoji;
    c.node.querySelector('.cursor-name').textContent = d.username;
    c.node.style.left = d.x + '%';
    c.node.style.top = d.y + '%';
  }

  function removeCursor(id) {
    const c = cursors.get(id);
    if (c) c.node.remove();
    cursors.delete(id);
  }
  // </example:cursors>

  // A cursor whose owner's server process died never gets its cursor-left: fade it out.
  setInterval(() => {
    const now = Date.now();
    cursors.forEach((c, id) => {
      if (now - c.seen > 60000) removeCursor(id);
    });
  }, 5000);
  document.querySelectorAll('#emoji-picker button').forEach((b) => {
    b.addEventListener('click', () => {
      myEmoji = b.dataset.emoji;
      document.querySelectorAll('#emoji-picker button').forEach((x) => x.classList.toggle('active', x === b));
    });
  });
  showStatus(emojiWs, 'cursors-status');
  window.hello.emoji = emojiWs;

  // <example:todo>
  // Todo, pattern A: REST does the work, the WebSocket tells everyone.
  const API = '/api/1/hello-todo';
  const todoWs = jPulse.ws.connect('/api/1/ws/hello-todo');
  const todos = new Map(); // id -> todo

  async function api(method, url, body) {
    const response = await fetch(url, {
      method: method,
      headers: {'Content-Type': 'application/json'},
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
    });
    try {
      return await response.json();
    } catch (err) {
      return {success: false, error: 'HTTP ' + response.status};
    }
  }

  // Broadcasts that arrive while the list is being fetched may be newer than the
  // list: keep them and apply them again on top of it. Only the latest load counts.
  let arrivedDuringLoad = null;

  async function loadTodos() {
    const arrived = arrivedDuringLoad = [];
    const result = await api('GET', API);
    if (arrivedDuringLoad !== arrived) return; // a newer load is on its way
    arrivedDuringLoad = null;
    if (!result.success) return showError('todo-error', result.error);
    todos.clear();
    result.data.forEach((t) => todos.set(t.id, t));
    arrived.forEach(applyTodoEvent);
    renderTodos();
  }

  function applyTodoEvent(msg) {
    const d = msg.data || {};
    if (msg.type === 'todo-created' || msg.type === 'todo-updated') todos.set(d.todo.id, d.todo);
    else if (msg.type === 'todo-deleted') todos.delete(d.todoId);
    else return false;
    return true;
  }

  $('#todo-form').addEventListener('submit', async (event) => {
    event.preventDefault();
    const input = $('#todo-title');
    const result = await api('POST', API, {title: input.value});
    if (!result.success) return showError('todo-error', result.error); // 400: shown, not added
    showError('todo-error', '');
    input.value = '';
    todos.set(result.data.id, result.data); // the broadcast will say the same
    renderTodos();
  });

  todoWs.onMessage((frame) => {
    if (!frame.success) return;
    if (arrivedDuringLoad) arrivedDuringLoad.push(frame.data);
    if (applyTodoEvent(frame.data)) renderTodos();
  });
  // Messages sent while we were away are not replayed: fetch the list again.
  todoWs.onResync(loadTodos);
  // </example:todo>

  let todosLoaded = false;
  todoWs.onStatusChange((status) => {
    if (status === 'connected' && !todosLoaded) {
      todosLoaded = true; // first connection: the initial list (reconnects use onResync)
      loadTodos();
    }
  });

  function renderTodos() {
    const list = $('#todo-list');
    list.replaceChildren();
    const sorted = Array.from(todos.values()).sort((a, b) => b.id - a.id);
    if (!sorted.length) list.append(el('li', 'Nothing to do. Add something above.', 'muted'));
    sorted.forEach((t) => {
      const li = el('li', null, t.completed ? 'done' : '');
      li.dataset.id = t.id;
      const box = document.createElement('input');
      box.type = 'checkbox';
      box.checked = t.completed;
      box.setAttribute('aria-label', 'done');
      box.addEventListener('change', async () => {
        const result = await api('PUT', API + '/' + t.id + '/toggle');
        if (!result.success) showError('todo-error', result.error);
      });
      const del = el('button', '×', 'icon');
      del.title = 'Delete';
      del.addEventListener('click', async () => {
        const result = await api('DELETE', API + '/' + t.id);
        if (!result.success) showError('todo-error', result.error);
      });
      li.append(box, el('span', t.title, 'title'), el('span', 'by ' + t.username, 'muted'), del);
      list.append(li);
    });
  }
  showStatus(todoWs, 'todo-status');
  window.hello.todo = todoWs;

  // <example:notes>
  // Sticky notes, pattern B: every change is a request() over the WebSocket.
  const notesWs = jPulse.ws.connect('/api/1/ws/hello-notes');
  const board = $('#notes-board');
  const notes = new Map(); // id -> {note, node, text}
  const typing = {}; // id -> debounce timer while local text is not sent yet
  let maxNotes = 200;

  notesWs.onMessage((frame) => {
    if (!frame.success) return showError('notes-error', frame.error);
    const msg = frame.data;
    const d = msg.data || {};
    if (msg.type === 'notes-init') {
      maxNotes = d.max;
      notes.forEach((n, id) => {
        if (!d.notes.some((note) => note.id === id)) removeNote(id);
      });
      d.notes.forEach((note) => upsertNote(note));
    } else if (msg.type === 'note-created' || msg.type === 'note-updated') {
      upsertNote(d.note);
    } else if (msg.type === 'note-deleted') {
      removeNote(d.noteId);
    }
    $('#notes-count').textContent = notes.size + ' / ' + maxNotes + ' notes';
  });

  function upsertNote(note) {
    const n = notes.get(note.id) || createNote(note);
    n.note = note;
    if (!n.dragging) {
      n.node.style.left = note.x + 'px';
      n.node.style.top = note.y + 'px';
    }
    n.node.style.background = note.color;
    // The echo-overwrites-typing caveat: while this user has unsent text for the
    // note (or is in it), an echo would be older than what is on screen. Keep it.
    if (typing[note.id] || document.activeElement === n.text) return;
    if (n.text.value !== note.text) n.text.value = note.text;
  }

  function sendText(id, text) {
    delete typing[id];
    notesWs.request({type: 'note-update', data: {id: id, text: text}}).then(report);
  }

  function onTyping(id, text) {
    clearTimeout(typing[id]);
    typing[id] = setTimeout(() => sendText(id, text.value), 300);
  }

  function report(result) {
    showError('notes-error', result.success ? '' : result.error);
  }
  // </example:notes>

  function createNote(note) {
    const node = el('div', null, 'note');
    node.dataset.id = note.id;
    const bar = el('div', null, 'note-bar');
    bar.append(el('span', note.createdBy, 'muted'));
    const del = el('button', '×', 'icon');
    del.title = 'Delete note';
    del.addEventListener('click', () => {
      notesWs.request({type: 'note-delete', data: {id: note.id}}).then(report);
    });
    bar.append(del);
    const text = document.createElement('textarea');
    text.maxLength = 500;
    text.placeholder = 'Write something';
    node.append(bar, text);
    board.append(node);
    const n = {note: note, node: node, text: text, dragging: false};
    notes.set(note.id, n);
    text.addEventListener('input', () => onTyping(note.id, text));
    text.addEventListener('blur', () => {
      // Done editing: show what the server has, unless our own text is still on its way.
      if (!typing[note.id] && text.value !== n.note.text) text.value = n.note.text;
    });
    dragByBar(n, bar);
    return n;
  }

  function dragByBar(n, bar) {
    bar.addEventListener('mousedown', (event) => {
      if (event.target.tagName === 'BUTTON') return;
      event.preventDefault();
      const start = {x: event.clientX, y: event.clientY, left: n.note.x, top: n.note.y};
      const limits = {w: board.clientWidth - n.node.offsetWidth, h: board.clientHeight - n.node.offsetHeight};
      let pos = {x: start.left, y: start.top};
      let lastMove = 0;
      n.dragging = true;
      function move(e) {
        pos = {
          x: Math.max(0, Math.min(limits.w, start.left + e.clientX - start.x)),
          y: Math.max(0, Math.min(limits.h, start.top + e.clientY - start.y)),
        };
        n.node.style.left = pos.x + 'px';
        n.node.style.top = pos.y + 'px';
        if (Date.now() - lastMove > 100) { // live, but at most 10 moves a second
          lastMove = Date.now();
          notesWs.send({type: 'note-update', data: {id: n.note.id, x: pos.x, y: pos.y}});
        }
      }
      function drop() {
        document.removeEventListener('mousemove', move);
        document.removeEventListener('mouseup', drop);
        // Echoes of the live moves may still be on their way: they all come before the
        // reply to this request, so keep ignoring positions until it arrives.
        notesWs.request({type: 'note-update', data: {id: n.note.id, x: pos.x, y: pos.y}})
          .then((result) => {
            n.dragging = false;
            if (!result.success) { // refused (or lost): show where the server has it
              n.node.style.left = n.note.x + 'px';
              n.node.style.top = n.note.y + 'px';
            }
            report(result);
          });
      }
      document.addEventListener('mousemove', move);
      document.addEventListener('mouseup', drop);
    });
  }

  function removeNote(id) {
    const n = notes.get(id);
    if (n) n.node.remove();
    notes.delete(id);
    clearTimeout(typing[id]);
    delete typing[id];
  }

  let noteColor = $('#color-picker button').dataset.color;
  document.querySelectorAll('#color-picker button').forEach((b) => {
    b.addEventListener('click', () => {
      noteColor = b.dataset.color;
      document.querySelectorAll('#color-picker button').forEach((x) => x.classList.toggle('active', x === b));
    });
  });
  $('#note-add').addEventListener('click', () => {
    const x = 20 + Math.floor(Math.random() * Math.max(1, board.clientWidth - 240));
    const y = 20 + Math.floor(Math.random() * Math.max(1, board.clientHeight - 200));
    notesWs.request({type: 'note-create', data: {x: x, y: y, text: '', color: noteColor}}).then(report);
  });
  showStatus(notesWs, 'notes-status');
  window.hello.notes = notesWs;

  // <example:rooms>
  // Dynamic rooms: one namespace per room; unknown rooms are refused (close 4404).
  // Who is here comes from presence: the handle keeps the member list in step.
  let roomWs = null;

  function joinRoom(name) {
    if (roomWs) roomWs.disconnect();
    roomWs = null;
    $('#room-chat').replaceChildren();
    $('#room-current').textContent = name;
    showMembers([], null);
    const ws = jPulse.ws.connect('/api/1/ws/hello-rooms/' + encodeURIComponent(name));
    roomWs = ws;
    window.hello.room = ws;
    ws.onStatusChange((status) => {
      if (ws !== roomWs) return;
      $('#rooms-status').textContent = status;
      $('#rooms-status').dataset.status = status;
      if (status === 'disconnected') showError('rooms-error', 'The room "' + name + '" does not exist (or you left it).');
    });
    ws.onPresence(({joined, left, members, snapshot}) => {
      if (ws !== roomWs) return;
      if (!snapshot) { // a batch: say who came and went, not a reconnect or another tab
        const others = (m) => members.filter((x) => x.clientId !== m.clientId && x.username && x.username === m.username);
        joined.filter((m) => m.clientId !== ws.getClientId() && !left.some((l) => l.clientId === m.clientId) && !others(m).length)
          .forEach((m) => addChatLine(who(m) + ' joined', 'muted'));
        left.filter((m) => !members.some((x) => x.clientId === m.clientId) && !others(m).length)
          .forEach((m) => addChatLine(who(m) + ' left', 'muted'));
      }
      showMembers(members, ws.getClientId());
    });
    ws.onMessage((frame) => {
      if (!frame.success) return showError('rooms-error', frame.error);
      const msg = frame.data;
      const d = msg.data || {};
      if (msg.type === 'welcome') {
        showError('rooms-error', '');
        $('#room-worker').textContent = 'served by process ' + d.pid;
      } else if (msg.type === 'chat') {
        addChatLine(time(d.timestamp) + '  ' + d.username + ': ' + d.text);
      }
    });
  }

  function who(member) {
    return member.username || 'guest';
  }

  /** "N people here" and one line per person (a user's tabs together), as text. */
  function showMembers(members, myId) {
    const people = new Map(); // username, or the client id of a guest -> their tabs
    members.forEach((m) => {
      const key = m.username ? 'user:' + m.username : 'guest:' + m.clientId;
      if (!people.has(key)) people.set(key, []);
      people.get(key).push(m);
    });
    const n = people.size;
    $('#room-count').textContent = roomWs ? (n === 1 ? '1 person here' : n + ' people here') : '-';
    $('#room-count').dataset.count = String(n);
    const list = $('#room-members');
    list.replaceChildren();
    people.forEach((tabs) => {
      const mine = tabs.some((m) => m.clientId === myId);
      const item = el('li', who(tabs[0]) + (mine ? ' (you)' : ''));
      const info = tabs[0].info || {};
      const details = [info.name !== who(tabs[0]) ? info.name : null, tabs.length > 1 ? tabs.length + ' tabs' : null,
        info.pid ? 'process ' + info.pid : null].filter(Boolean);
      if (details.length) item.append(el('span', ' · ' + details.join(' · '), 'muted'));
      if (mine) item.classList.add('me');
      list.append(item);
    });
  }

  function addChatLine(text, cls) {
    const chat = $('#room-chat');
    chat.append(el('li', text, cls));
    chat.scrollTop = chat.scrollHeight;
  }

  $('#chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('#chat-text');
    if (roomWs && input.value.trim() && roomWs.send({type: 'chat', data: {text: input.value}})) input.value = '';
  });
  // </example:rooms>

  document.querySelectorAll('.room-join').forEach((b) => {
    b.addEventListener('click', () => joinRoom(b.dataset.room));
  });
  $('#room-other').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('#room-name').value.trim();
    if (name) joinRoom(name);
  });
  $('#room-leave').addEventListener('click', () => {
    if (!roomWs) return;
    const ws = roomWs;
    roomWs = null;
    ws.disconnect();
    $('#rooms-status').textContent = 'not joined';
    $('#room-current').textContent = '-';
    showMembers([], null);
  });

  // <example:request>
  // Request/response both ways.
  const reqWs = jPulse.ws.connect('/api/1/ws/hello-request');

  // The server asks us: answer with reply() (the frame carries its requestId).
  reqWs.onMessage((frame) => {
    if (!frame.success || frame.data.type !== 'get-browser-info') return;
    const asker = (frame.data.data || {}).askedBy;
    $('#req-asked').append(el('li', time(Date.now()) + '  ' +
      (asker === 'server' ? 'the server' : asker + ' (through the server)') + ' asked for this browser\'s info'));
    reqWs.reply(frame, {
      type: 'browser-info',
      data: {userAgent: navigator.userAgent, language: navigator.language, page: location.pathname},
    });
  });

  // We ask the server: request() always resolves, with the reply or {success: false, code}.
  async function ask(message) {
    const result = await reqWs.request(message, {timeoutMs: 8000});
    $('#req-result').textContent = JSON.stringify(result, null, 2);
    return result;
  }
  $('#req-echo').addEventListener('click', () => ask({type: 'echo', data: {text: $('#echo-text').value}}));
  $('#req-browser').addEventListener('click', () => ask({type: 'ask-browser'}));
  $('#req-peers').addEventListener('click', () => ask({type: 'ask-peers'}));
  $('#req-unknown').addEventListener('click', () => ask({type: 'no-such-thing'})); // NO_REPLY
  $('#req-oversize').addEventListener('click', () => ask({type: 'echo', data: {text: 'x'.repeat(2000)}})); // MESSAGE_TOO_LARGE
  // </example:request>
  showStatus(reqWs, 'request-status');
  window.hello.request = reqWs;
})();
