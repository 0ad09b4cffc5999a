/*
 * Stampede demo page. Licensed Apache-2.0, like Stampede.
 *
 * One @stomp/stompjs client per page, through StampedeFallback.factory (WebSocket first, the
 * SSE + POST fallback when none opens; ?transport=sse forces the fallback). ?nick=NAME picks a
 * nickname. window.stampedeDemo exposes the page's state for tests.
 */
(function () {
  'use strict';

  var params = new URLSearchParams(location.search);
  var nick = (params.get('nick') || 'guest-' + Math.random().toString(16).slice(2, 6)).slice(0, 24);
  var forceSse = params.get('transport') === 'sse';
  var wsPath = (window.STAMPEDE_DEMO && window.STAMPEDE_DEMO.wsPath) || '/ws';
  var wsUrl = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + wsPath;
  var $ = function (id) { return document.getElementById(id); };

  var demo = window.stampedeDemo = {
    nick: nick, connected: false, transport: null, chat: [], online: {}, prices: {}, ticks: 0, jobs: {},
  };

  function el(tag, cls, text) {
    var node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }
  function clock(ms) { return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' }); }
  function parse(body) { try { return JSON.parse(body); } catch (e) { return null; } }

  if (forceSse && window.StampedeFallback) window.StampedeFallback.forced = true;
  $('me').textContent = nick;

  var client = new StompJs.Client({
    webSocketFactory: window.StampedeFallback.factory(wsUrl),
    reconnectDelay: 2000,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
  });

  function publish(destination, body, headers) {
    client.publish({ destination: destination, body: JSON.stringify(body), headers: Object.assign({ 'content-type': 'application/json' }, headers || {}) });
  }

  // ---------------------------------------------------------------- chat and presence

  function addChat(m, fromHistory) {
    if (!m || typeof m.text !== 'string') return;
    var key = m.nick + '|' + m.at + '|' + m.text;
    if (demo.chat.some(function (c) { return c.key === key; })) return;
    demo.chat.push({ key: key, nick: m.nick, text: m.text, at: m.at, history: !!fromHistory });
    demo.chat.sort(function (a, b) { return a.at - b.at; });
    var log = $('chat-log');
    log.replaceChildren.apply(log, demo.chat.map(function (c) {
      var li = el('li', c.history ? 'history' : '');
      li.appendChild(el('span', 'nick', c.nick));
      li.appendChild(document.createTextNode(c.text));
      li.appendChild(el('span', 'time', clock(c.at)));
      return li;
    }));
    log.scrollTop = log.scrollHeight;
  }

  function renderOnline() {
    var now = Date.now();
    Object.keys(demo.online).forEach(function (n) { if (now - demo.online[n] > 25000) delete demo.online[n]; });
    $('online').textContent = Object.keys(demo.online).sort().join(', ') || '–';
  }

  function onPresence(m) {
    var p = parse(m.body);
    if (!p || !p.nick) return;
    if (p.state === 'leave') delete demo.online[p.nick];
    else demo.online[p.nick] = Date.now();
    // Newcomers learn who is here from the answers to their join.
    if (p.state === 'join' && p.nick !== nick) publish('/topic/demo.presence', { nick: nick, state: 'here' });
    renderOnline();
  }

  $('chat-form').addEventListener('submit', function (event) {
    event.preventDefault();
    var text = $('chat-text').value.trim();
    if (!text || !demo.connected) return;
    publish('/topic/demo.chat', { nick: nick, text: text, at: Date.now() });
    $('chat-text').value = '';
  });

  // ---------------------------------------------------------------- ticker

  function onPrice(m) {
    var p = parse(m.body);
    if (!p || !p.symbol) return;
    var old = demo.prices[p.symbol];
    demo.prices[p.symbol] = p;
    demo.ticks++;
    var row = document.querySelector('tr[data-symbol="' + p.symbol + '"]');
    if (!row) {
      row = el('tr');
      row.dataset.symbol = p.symbol;
      row.appendChild(el('td', '', p.symbol));
      row.appendChild(el('td', 'num price'));
      row.appendChild(el('td', 'num change'));
      var rows = Array.prototype.slice.call($('prices').children).concat([row]);
      rows.sort(function (a, b) { return a.dataset.symbol < b.dataset.symbol ? -1 : 1; });
      $('prices').replaceChildren.apply($('prices'), rows);
    }
    var price = row.children[1], change = row.children[2];
    price.textContent = p.price.toFixed(2);
    price.className = 'num price' + (old ? (p.price > old.price ? ' flash-up' : p.price < old.price ? ' flash-down' : '') : '');
    change.textContent = (p.change > 0 ? '+' : '') + p.change.toFixed(2) + '%';
    change.className = 'num change ' + (p.change >= 0 ? 'up' : 'down');
  }

  // ---------------------------------------------------------------- jobs

  var jobCounter = 0;
  function renderJobs() {
    var ids = Object.keys(demo.jobs).sort(function (a, b) { return demo.jobs[b].sent - demo.jobs[a].sent; });
    $('job-log').replaceChildren.apply($('job-log'), ids.slice(0, 20).map(function (id) {
      var job = demo.jobs[id];
      var li = el('li', job.result ? '' : 'pending');
      li.dataset.job = id;
      if (!job.result) li.textContent = 'job ' + id + ': factoring ' + job.number + '…';
      else if (job.result.error) li.textContent = 'job ' + id + ': ' + job.result.error;
      else li.textContent = 'job ' + id + ': ' + job.number + ' = ' + job.result.factors.join(' × ') +
        ' (' + job.result.worker + ', ' + job.result.took_ms + ' ms, round trip ' + job.roundTrip + ' ms)';
      return li;
    }));
  }

  function onJobReply(m) {
    var r = parse(m.body);
    var job = r && demo.jobs[r.id];
    if (!job) return;
    job.result = r;
    job.roundTrip = Date.now() - job.sent;
    renderJobs();
  }

  $('job-form').addEventListener('submit', function (event) {
    event.preventDefault();
    var number = Number($('job-number').value);
    if (!demo.connected || !(number >= 2)) return;
    var id = nick + '-' + (++jobCounter);
    demo.jobs[id] = { number: number, sent: Date.now(), result: null };
    publish('/queue/demo.jobs', { id: id, number: number }, { 'reply-to': '/temp-queue/jobs' });
    renderJobs();
  });

  // ---------------------------------------------------------------- connection

  function status(text, ok) {
    var node = $('status');
    node.textContent = text;
    node.className = 'pill ' + (ok ? 'ok' : 'bad');
  }

  var presenceTimer = null;
  client.onConnect = function () {
    demo.connected = true;
    demo.transport = !window.WebSocket || window.StampedeFallback.forced ? 'SSE fallback' : 'WebSocket';
    $('transport').textContent = demo.transport;
    status('connected', true);
    client.subscribe('/topic/demo.chat', function (m) { addChat(parse(m.body), false); });
    client.subscribe('/topic/demo.presence', onPresence);
    client.subscribe('/topic/demo.ticker.*', onPrice);
    client.subscribe('/temp-queue/jobs', onJobReply);
    client.subscribe('/temp-queue/history', function (m) {
      (parse(m.body) || []).forEach(function (c) { addChat(c, true); });
      demo.historyLoaded = true;
    });
    publish('/queue/demo.chat.history', {}, { 'reply-to': '/temp-queue/history' });
    publish('/topic/demo.presence', { nick: nick, state: 'join' });
    clearInterval(presenceTimer);
    presenceTimer = setInterval(function () {
      if (demo.connected) publish('/topic/demo.presence', { nick: nick, state: 'here' });
      renderOnline();
    }, 10000);
  };
  client.onWebSocketClose = function () {
    demo.connected = false;
    status('reconnecting…', false);
  };
  client.onStompError = function (frame) { status('error: ' + frame.headers.message, false); };
  window.addEventListener('beforeunload', function () {
    if (demo.connected) publish('/topic/demo.presence', { nick: nick, state: 'leave' });
  });
  client.activate();
})();
