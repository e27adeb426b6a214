/*!
 * flask-jpulse-ws admin dashboard. Every value from the server is untrusted (namespace
 * paths, usernames and message texts come from clients), so it is rendered with
 * textContent and createElement only: never innerHTML.
 */
(function () {
  'use strict';

  const root = document.getElementById('jw-dashboard');
  const statusPath = root.dataset.statusPath;
  const SVG = 'http://www.w3.org/2000/svg';
  let last = null; // the latest stats-update, for re-filtering without waiting

  function $(id) {
    return document.getElementById(id);
  }

  /** An element with text (never HTML) and an optional class. */
  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function setText(id, text) {
    $(id).textContent = String(text);
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function duration(seconds) {
    let s = Math.floor(Number(seconds) || 0);
    const d = Math.floor(s / 86400);
    s -= d * 86400;
    const h = Math.floor(s / 3600);
    s -= h * 3600;
    const m = Math.floor(s / 60);
    s -= m * 60;
    const parts = [];
    if (d) parts.push(d + 'd');
    if (d || h) parts.push(h + 'h');
    if (d || h || m) parts.push(m + 'm');
    parts.push(s + 's');
    return parts.join(' ');
  }

  function since(iso) {
    const t = Date.parse(iso);
    if (!t) return '-';
    const ago = Math.max(0, (Date.now() - t) / 1000);
    if (ago < 2) return 'just now';
    return duration(ago) + ' ago';
  }

  function clock(iso) {
    const t = new Date(iso);
    return isNaN(t) ? String(iso) : t.toLocaleTimeString();
  }

  function num(n) {
    return typeof n === 'number' ? n.toLocaleString() : '-';
  }

  // ---- namespace cards ----------------------------------------------------------

  function sparkline(values) {
    const w = 180;
    const h = 36;
    const svg = document.createElementNS(SVG, 'svg');
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h);
    svg.setAttribute('class', 'jw-spark');
    svg.setAttribute('role', 'img');
    const data = Array.isArray(values) && values.length ? values : [0];
    const max = Math.max(1, ...data);
    const step = data.length > 1 ? w / (data.length - 1) : w;
    const points = data.map((v, i) => (i * step).toFixed(1) + ',' + (h - 2 - (v / max) * (h - 4)).toFixed(1));
    const area = document.createElementNS(SVG, 'polygon');
    area.setAttribute('points', '0,' + h + ' ' + points.join(' ') + ' ' + w + ',' + h);
    area.setAttribute('class', 'jw-spark-area');
    const line = document.createElementNS(SVG, 'polyline');
    line.setAttribute('points', points.join(' '));
    line.setAttribute('class', 'jw-spark-line');
    const title = document.createElementNS(SVG, 'title');
    title.textContent = 'messages per second, last ' + data.length + ' s (peak ' + Math.max(...data) + ')';
    svg.append(title, area, line);
    return svg;
  }

  function row(dl, label, value) {
    dl.append(el('dt', label), el('dd', value));
  }

  function card(ns) {
    const box = el('article', null, 'jw-card');
    box.dataset.path = ns.path;
    box.dataset.status = ns.status;
    const head = el('header', null, 'jw-card-head');
    const dot = el('span', null, 'jw-dot jw-' + ns.status);
    dot.title = ns.status;
    head.append(dot, el('span', ns.path, 'jw-path'));
    const dl = el('dl', null, 'jw-dl');
    const presence = ns.presence && typeof ns.presence === 'object' ? ns.presence : null;
    if (presence) {
      // Presence counts every process's members; partial: Redis unreadable, ours only.
      const partial = presence.partial ? ' (partial)' : '';
      head.append(el('span', presence.partial ? 'presence: partial' : 'presence', 'jw-badge' + (presence.partial ? ' jw-partial' : '')));
      row(dl, 'Clients (presence)', num(presence.clients) + partial);
      row(dl, 'Users (presence)', num(presence.users) + partial);
      row(dl, 'Clients here', num(ns.clientCount));
      dl.querySelectorAll('dd')[1].classList.add('jw-users');
    } else {
      row(dl, 'Clients', num(ns.clientCount));
      row(dl, 'Active users', num(ns.activeUsers));
    }
    row(dl, 'Msgs / min', num(ns.messagesPerMin));
    row(dl, 'Msgs / hour', num(ns.messagesPerHour));
    row(dl, 'Total messages', num(ns.totalMessages));
    row(dl, 'Deliveries', num(ns.deliveries));
    const dropped = ns.dropped || {};
    const total = Object.values(dropped).reduce((a, b) => a + (Number(b) || 0), 0);
    const reasons = Object.keys(dropped).filter((k) => dropped[k]).map((k) => k + ' ' + dropped[k]);
    row(dl, 'Dropped', total + (reasons.length ? ' (' + reasons.join(', ') + ')' : ''));
    const lim = ns.limits || {};
    row(dl, 'Limits', Math.round((lim.maxSize || 0) / 1024) + ' KB · ' + lim.maxMessages + ' / ' + lim.interval + ' ms');
    row(dl, 'Last activity', since(ns.lastActivity));
    box.append(head, sparkline(ns.sparkline), dl);
    box.querySelector('.jw-dl dd').classList.add('jw-clients');
    return box;
  }

  function renderNamespaces(list) {
    const box = $('jw-namespaces');
    clear(box);
    const sorted = list.slice().sort((a, b) => String(a.path).localeCompare(String(b.path)));
    if (!sorted.length) box.append(el('p', 'No namespaces to show.', 'jw-muted'));
    sorted.forEach((ns) => box.append(card(ns)));
    // Keep the namespace filter's options in step with what exists.
    const select = $('jw-filter-ns');
    const chosen = select.value;
    const paths = new Set(sorted.map((ns) => ns.path));
    (last.activityLog || []).forEach((e) => paths.add(e.namespace));
    clear(select);
    select.append(new Option('all', ''));
    Array.from(paths).sort().forEach((p) => select.append(new Option(p, p)));
    select.value = paths.has(chosen) ? chosen : '';
  }

  // ---- cluster ------------------------------------------------------------------

  function renderCluster(cluster) {
    const rows = cluster && Array.isArray(cluster.instances) ? cluster.instances : [];
    $('jw-cluster-section').hidden = rows.length < 2 && !(cluster && cluster.error);
    const body = $('jw-cluster').tBodies[0];
    clear(body);
    rows.forEach((r) => {
      const tr = el('tr');
      const spread = (r.namespaces || []).map((n) => n.path + ' (' + n.clients + ')').join(', ');
      [r.instanceId, r.host || '', r.pid, num(r.connections), num(r.totalMessages), spread || '-',
        r.updated ? since(r.updated) : '-', r.degraded ? 'degraded' : 'ok'].forEach((v) => tr.append(el('td', v)));
      body.append(tr);
    });
    if (cluster && cluster.error) {
      const tr = el('tr');
      const td = el('td', cluster.error, 'jw-error');
      td.colSpan = 8;
      tr.append(td);
      body.append(tr);
    }
  }

  // ---- activity log -------------------------------------------------------------

  function renderLog() {
    const body = $('jw-log').tBodies[0];
    clear(body);
    const ns = $('jw-filter-ns').value;
    const dir = $('jw-filter-dir').value;
    const entries = (last.activityLog || []).filter((e) => (!ns || e.namespace === ns) && (!dir || e.direction === dir));
    entries.forEach((e) => {
      const tr = el('tr', null, 'jw-dir-' + String(e.direction).replace(/[^a-z]/g, ''));
      tr.append(el('td', clock(e.timestamp)), el('td', e.direction), el('td', e.namespace),
        el('td', e.username || '-'), el('td', e.type || ''), el('td', e.message || '', 'jw-msg'));
      body.append(tr);
    });
    if (!entries.length) {
      const tr = el('tr');
      const td = el('td', 'No activity in the last 5 minutes' + (ns || dir ? ' matching the filters.' : '.'), 'jw-muted');
      td.colSpan = 6;
      tr.append(td);
      body.append(tr);
    }
    setText('jw-log-count', entries.length + ' of ' + (last.activityLog || []).length + ' entries');
  }

  // ---- the whole update ---------------------------------------------------------

  function render(data) {
    last = data;
    setText('jw-uptime', duration(data.uptime));
    setText('jw-total-messages', num(data.totalMessages));
    setText('jw-open', num(data.openConnections));
    setText('jw-connections', num(data.totalConnections));
    setText('jw-namespaces-count', num(data.totalNamespaces));
    setText('jw-dropped', num(data.totalDropped));
    const relay = data.relay || {};
    setText('jw-relay', (relay.kind || '-') + (relay.degraded ? ' (degraded)' : ''));
    const presence = data.presence && typeof data.presence === 'object' ? data.presence : null;
    $('jw-presence').hidden = !presence;
    if (presence) {
      setText('jw-presence', 'Presence on this process: ' + num(presence.localMembers) + ' members, ' +
        num(presence.framesSent) + ' event frames sent, ' + num(presence.reaped) + ' members of dead processes removed. ' +
        'Cards marked presence count clients and users on every process.');
    }
    const t = data.statusTimeouts || {};
    setText('jw-legend', 'Green: activity in the last ' + duration(t.warning) + '. Yellow: idle longer, clients connected. ' +
      'Red: no clients, or idle over ' + duration(t.inactive) + '. Sparklines: messages per second over the last 60 s.');
    renderNamespaces(data.namespaces || []);
    renderCluster(data.cluster);
    renderLog();
    setText('jw-updated', clock(data.serverTime));
    window.jwLastUpdate = Date.now(); // for tests and curious people
  }

  $('jw-filter-ns').addEventListener('change', () => last && renderLog());
  $('jw-filter-dir').addEventListener('change', () => last && renderLog());

  const conn = jPulse.ws.connect(statusPath);
  conn.onStatusChange((status) => {
    const pill = $('jw-conn');
    pill.dataset.status = status;
    pill.textContent = status === 'auth-required' ? 'not allowed: log in as an admin' : status;
  });
  conn.onMessage((frame) => {
    if (frame.success && frame.data && frame.data.type === 'stats-update') render(frame.data.data || {});
  });
  conn.onResync(() => conn.send({type: 'refresh'}));
})();
