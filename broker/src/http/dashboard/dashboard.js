/*
 * Stampede dashboard. Licensed Apache-2.0, like Stampede.
 *
 * Polls the management API (/api/v1/...) with the browser's own credentials for this origin and
 * renders it; every action is an API call. No framework, no build step: what the broker serves
 * is this file. `?interval=MS` changes the poll interval (default 2000).
 */
(function () {
  'use strict';

  var params = new URLSearchParams(location.search);
  var INTERVAL = Math.max(250, Number(params.get('interval')) || 2000);
  var HISTORY = Math.ceil(5 * 60 * 1000 / INTERVAL); // five minutes of points
  var PAGE_SIZE = 100;
  var MIN_SPAN = 30; // points: a minute at the default interval

  var $ = function (id) { return document.getElementById(id); };
  var history = [];
  var state = { tab: 'overview', pages: { connections: 1, queues: 1 }, peek: null, timer: null, busy: false };

  // ------------------------------------------------------------------ formatting

  var integer = new Intl.NumberFormat('en-US', { maximumFractionDigits: 0 });
  var decimal = new Intl.NumberFormat('en-US', { maximumFractionDigits: 1 });

  function count(n) { return n === null || n === undefined ? '–' : integer.format(n); }
  function rate(n) {
    if (n === null || n === undefined) return '–';
    if (n >= 10000) return decimal.format(n / 1000) + 'k';
    return n >= 100 ? integer.format(n) : decimal.format(n);
  }
  function bytes(n) {
    if (n === null || n === undefined) return '–';
    var units = ['B', 'KB', 'MB', 'GB', 'TB'];
    var i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? integer.format(n) : decimal.format(n)) + ' ' + units[i];
  }
  function duration(seconds) {
    if (seconds < 60) return Math.floor(seconds) + 's';
    var m = Math.floor(seconds / 60), h = Math.floor(m / 60), d = Math.floor(h / 24);
    if (d > 0) return d + 'd ' + (h % 24) + 'h';
    if (h > 0) return h + 'h ' + (m % 60) + 'm';
    return m + 'm ' + Math.floor(seconds % 60) + 's';
  }
  function ago(ms) { return duration(Math.max(0, (Date.now() - ms) / 1000)) + ' ago'; }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === 'text') node.textContent = attrs[key];
      else if (key === 'class') node.className = attrs[key];
      else if (key.slice(0, 2) === 'on') node.addEventListener(key.slice(2), attrs[key]);
      else node.setAttribute(key, attrs[key]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }
  function td(text, cls) { return el('td', { text: text, class: cls || '' }); }

  // ------------------------------------------------------------------ the API

  function api(method, path, body) {
    var options = { method: method, headers: { accept: 'application/json' }, credentials: 'same-origin' };
    if (body !== undefined) {
      options.headers['content-type'] = 'application/json';
      options.body = JSON.stringify(body);
    }
    return fetch('/api/v1' + path, options).then(function (response) {
      return response.text().then(function (text) {
        var json = null;
        try { json = text ? JSON.parse(text) : null; } catch (e) { json = null; }
        if (!response.ok) {
          var error = new Error((json && json.reason) || ('HTTP ' + response.status));
          error.status = response.status;
          throw error;
        }
        return json;
      });
    });
  }

  function queuePath(q) { return '/queues/' + encodeURIComponent(q.vhost) + '/' + encodeURIComponent(q.name); }

  function banner(text, kind) {
    var node = $('banner');
    if (!text) { node.hidden = true; return; }
    node.hidden = false;
    node.className = 'banner' + (kind ? ' ' + kind : '');
    node.textContent = text;
    clearTimeout(state.bannerTimer);
    // Reports of what was done fade; errors stay until the next successful refresh.
    if (kind === 'info') state.bannerTimer = setTimeout(function () { node.hidden = true; }, 8000);
  }

  function confirmAction(text, withReason) {
    var dialog = $('confirm');
    $('confirm-text').textContent = text;
    $('confirm-reason-label').hidden = !withReason;
    $('confirm-reason').value = '';
    return new Promise(function (resolve) {
      dialog.addEventListener('close', function done() {
        dialog.removeEventListener('close', done);
        resolve(dialog.returnValue === 'ok' ? { reason: $('confirm-reason').value } : null);
      });
      dialog.showModal();
    });
  }

  // ------------------------------------------------------------------ charts

  function drawChart(canvas, series, unit) {
    var ratio = window.devicePixelRatio || 1;
    var width = canvas.clientWidth, height = canvas.clientHeight;
    if (!width || !height) return;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    var g = canvas.getContext('2d');
    g.setTransform(ratio, 0, 0, ratio, 0, 0);
    g.clearRect(0, 0, width, height);
    var left = 48, bottom = 18, top = 6, plotW = width - left - 6, plotH = height - top - bottom;
    var max = 0;
    series.forEach(function (s) { history.forEach(function (p) { max = Math.max(max, s.value(p)); }); });
    max = niceMax(max);
    g.font = '11px system-ui, sans-serif';
    g.fillStyle = '#66707d';
    g.strokeStyle = '#e2e6ec';
    g.lineWidth = 1;
    for (var i = 0; i <= 4; i++) {
      var y = top + plotH - plotH * i / 4;
      g.beginPath(); g.moveTo(left, y + 0.5); g.lineTo(left + plotW, y + 0.5); g.stroke();
      g.textAlign = 'right'; g.textBaseline = 'middle';
      g.fillText(rate(max * i / 4) + (i === 4 && unit ? unit : ''), left - 6, y);
    }
    // The x axis spans the points collected, at least MIN_SPAN of them, at most five minutes.
    var span = Math.min(HISTORY, Math.max(history.length, MIN_SPAN));
    g.textAlign = 'left'; g.textBaseline = 'alphabetic';
    g.fillText('−' + duration(span * INTERVAL / 1000), left, height - 4);
    g.textAlign = 'right';
    g.fillText('now', left + plotW, height - 4);
    if (history.length < 2) {
      g.textAlign = 'center';
      g.fillText('collecting data…', left + plotW / 2, top + plotH / 2);
      return;
    }
    var step = plotW / (span - 1);
    var offset = span - history.length;
    series.forEach(function (s) {
      g.strokeStyle = s.color; g.lineWidth = 2; g.beginPath();
      history.forEach(function (p, index) {
        var x = left + (offset + index) * step;
        var y = top + plotH - (max ? s.value(p) / max : 0) * plotH;
        if (index === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    });
  }

  function niceMax(value) {
    if (value <= 0) return 1;
    var magnitude = Math.pow(10, Math.floor(Math.log10(value)));
    var steps = [1, 2, 2.5, 5, 10];
    for (var i = 0; i < steps.length; i++) if (value <= steps[i] * magnitude) return steps[i] * magnitude;
    return 10 * magnitude;
  }

  function color(name) { return getComputedStyle(document.documentElement).getPropertyValue('--' + name).trim(); }

  function drawCharts() {
    if (state.tab !== 'overview') return;
    drawChart($('chart-rates'), [
      { color: color('publish'), value: function (p) { return p.publish; } },
      { color: color('deliver'), value: function (p) { return p.deliver; } },
      { color: color('ack'), value: function (p) { return p.ack; } },
    ], '/s');
    drawChart($('chart-depth'), [
      { color: color('ready'), value: function (p) { return p.ready; } },
      { color: color('unacked'), value: function (p) { return p.unacked; } },
      { color: color('connections'), value: function (p) { return p.connections; } },
    ], '');
  }

  // ------------------------------------------------------------------ overview

  function renderOverview(o) {
    $('version').textContent = 'v' + o.version;
    $('uptime').textContent = duration(o.uptime_seconds);
    var health = $('health');
    health.textContent = o.ready ? 'ready' : 'not ready';
    health.className = 'pill ' + (o.ready ? 'ok' : 'bad');
    $('n-connections').textContent = count(o.totals.connections);
    $('n-queues').textContent = count(o.totals.queues);
    $('c-connections').textContent = count(o.totals.connections);
    $('c-publish').textContent = rate(o.rates.publish.last_5s);
    $('c-publish60').textContent = rate(o.rates.publish.last_60s);
    $('c-deliver').textContent = rate(o.rates.deliver.last_5s);
    $('c-deliver60').textContent = rate(o.rates.deliver.last_60s);
    $('c-ack').textContent = rate(o.rates.ack.last_5s);
    $('c-queues').textContent = count(o.totals.queues);
    $('c-subscriptions').textContent = count(o.totals.subscriptions);
    $('c-ready').textContent = count(o.totals.messages_ready);
    $('c-unacked').textContent = count(o.totals.messages_unacked);
    $('c-memory').textContent = bytes(o.memory.resident_bytes);
    var disk = o.disk;
    $('card-disk').className = 'card' + (disk && disk.alarm ? ' alarm' : '');
    if (!disk) {
      $('c-disk').textContent = 'in memory';
      $('c-disk-sub').textContent = 'no store on disk';
    } else {
      $('c-disk').textContent = disk.alarm ? 'ALARM' : bytes(disk.free_bytes);
      $('c-disk-sub').textContent = disk.alarm
        ? bytes(disk.free_bytes) + ' free, below the ' + bytes(disk.limit_bytes) + ' limit: persistent messages refused'
        : 'free of ' + bytes(disk.total_bytes) + ' (limit ' + bytes(disk.limit_bytes) + ')';
    }
    var tbody = $('listeners').tBodies[0];
    tbody.replaceChildren.apply(tbody, o.listeners.map(function (l) {
      return el('tr', {}, [td(l.protocol), td(l.address, 'mono')]);
    }));
    history.push({
      publish: o.rates.publish.last_5s, deliver: o.rates.deliver.last_5s, ack: o.rates.ack.last_5s,
      ready: o.totals.messages_ready, unacked: o.totals.messages_unacked, connections: o.totals.connections,
    });
    while (history.length > HISTORY) history.shift();
    drawCharts();
  }

  // ------------------------------------------------------------------ listings

  function pager(id, page, render) {
    var node = $(id);
    node.replaceChildren();
    if (page.filtered_count === 0) return;
    var first = (page.page - 1) * page.page_size + 1;
    node.appendChild(document.createTextNode(
      count(first) + '–' + count(first + page.item_count - 1) + ' of ' + count(page.filtered_count) + ' '));
    var key = id.slice(2);
    if (page.page > 1) node.appendChild(el('button', { text: '‹ Prev', onclick: function () { state.pages[key]--; render(); } }));
    if (page.page < page.page_count) node.appendChild(el('button', { text: 'Next ›', onclick: function () { state.pages[key]++; render(); } }));
  }

  function fill(tableId, rows, columns, emptyText) {
    var tbody = $(tableId).tBodies[0];
    if (rows.length === 0) {
      tbody.replaceChildren(el('tr', {}, [el('td', { class: 'empty', colspan: String(columns), text: emptyText })]));
    } else {
      tbody.replaceChildren.apply(tbody, rows);
    }
  }

  function listQuery(key, filterId) {
    var query = '?page=' + state.pages[key] + '&page_size=' + PAGE_SIZE;
    var filter = $(filterId).value.trim();
    return filter ? query + '&name=' + encodeURIComponent(filter) : query;
  }

  function loadConnections() {
    return api('GET', '/connections' + listQuery('connections', 'f-connections') + '&sort=connected_at').then(function (page) {
      fill('connections', page.items.map(function (c) {
        return el('tr', { 'data-id': c.id }, [
          td(c.id, 'mono'), td(c.user || 'anonymous'), td(c.peer, 'mono'), td(c.transport),
          td(c.vhost || '–'), td(count(c.subscriptions), 'num'), td(count(c.pending_acks), 'num'),
          td(bytes(c.bytes_in), 'num'), td(bytes(c.bytes_out), 'num'), td(ago(c.connected_at_ms)),
          el('td', { class: 'actions' }, [el('button', { class: 'danger', text: 'Close', onclick: function () { closeConnection(c); } })]),
        ]);
      }), 11, $('f-connections').value ? 'No connection matches the filter.' : 'No client is connected.');
      pager('p-connections', page, refresh);
    });
  }

  function closeConnection(c) {
    confirmAction('Close connection ' + c.id + ' of ' + (c.user || 'an anonymous client') + ' from ' + c.peer + '?', true)
      .then(function (answer) {
        if (!answer) return;
        var headers = { accept: 'application/json' };
        if (answer.reason) headers['x-reason'] = answer.reason;
        return fetch('/api/v1/connections/' + encodeURIComponent(c.id), { method: 'DELETE', headers: headers })
          .then(function (r) { if (!r.ok && r.status !== 404) throw new Error('HTTP ' + r.status); banner('Connection ' + c.id + ' closed.', 'info'); refresh(); });
      }).catch(function (e) { banner('Closing the connection failed: ' + e.message); });
  }

  function loadQueues() {
    return api('GET', '/queues' + listQuery('queues', 'f-queues')).then(function (page) {
      fill('queues', page.items.map(function (q) {
        var badges = [];
        if (q.is_dlq) badges.push(el('span', { class: 'badge warn', text: 'dead letters' }));
        if (q.idle) badges.push(el('span', { class: 'badge', text: 'idle' }));
        if (q.idle && q.idle_expiry_ms && q.idle_since) {
          var left = Math.max(0, (q.idle_since + q.idle_expiry_ms - Date.now()) / 1000);
          badges.push(el('span', { class: 'badge warn', text: 'deleted in ' + duration(left) }));
        }
        else if (q.consumers > 0) badges.push(el('span', { class: 'badge ok', text: 'consuming' }));
        else badges.push(el('span', { class: 'badge warn', text: 'no consumer' }));
        if (q.durable) badges.push(el('span', { class: 'badge', text: 'durable' }));
        var actions = [
          el('button', { text: 'Peek', onclick: function () { peek(q); } }),
          el('button', { text: 'Purge', class: 'danger', onclick: function () { purge(q); } }),
        ];
        if (q.is_dlq) actions.push(el('button', { text: 'Move back', onclick: function () { moveBack(q); } }));
        actions.push(el('button', { text: 'Delete', class: 'danger', onclick: function () { deleteQueue(q); } }));
        var name = el('td', { class: 'mono' }, ['/queue/' + q.name]);
        return el('tr', { 'data-queue': q.name }, [
          name, td(q.vhost), td(count(q.messages_ready), 'num ready'), td(count(q.messages_unacked), 'num'),
          td(count(q.consumers), 'num'), td(rate(q.rates.publish), 'num in-rate'), td(rate(q.rates.deliver), 'num out-rate'),
          td(count(q.messages_dropped), 'num'),
          el('td', {}, badges.reduce(function (all, b) { all.push(b, ' '); return all; }, [])),
          el('td', { class: 'actions' }, actions),
        ]);
      }), 10, $('f-queues').value ? 'No queue matches the filter.'
        : 'No queues yet. A queue appears when a client sends to or subscribes to /queue/<name>.');
      pager('p-queues', page, refresh);
    });
  }

  function purge(q) {
    confirmAction('Purge /queue/' + q.name + '? Its ' + count(q.messages_ready) + ' waiting messages are deleted; unacknowledged ones stay.')
      .then(function (answer) {
        if (!answer) return;
        return api('DELETE', queuePath(q) + '/contents').then(function (r) {
          banner('Purged ' + count(r.purged) + ' messages from /queue/' + q.name + '.', 'info');
          if (state.peek && state.peek.name === q.name && state.peek.vhost === q.vhost) peek(q);
          refresh();
        });
      }).catch(function (e) { banner('Purge failed: ' + e.message); });
  }

  function deleteQueue(q) {
    confirmAction('Delete /queue/' + q.name + ' and its stored messages?').then(function (answer) {
      if (!answer) return;
      return api('DELETE', queuePath(q)).then(function () { banner('Deleted /queue/' + q.name + '.', 'info'); refresh(); });
    }).catch(function (e) { banner('Delete failed: ' + e.message); });
  }

  function moveBack(q) {
    confirmAction('Move every message of /queue/' + q.name + ' back to the queue it was dead-lettered from?').then(function (answer) {
      if (!answer) return;
      return api('POST', queuePath(q) + '/move', {}).then(function (r) {
        banner('Moved ' + count(r.moved) + ', skipped ' + count(r.skipped) + ', refused ' + count(r.refused) + (r.refusal ? ' (' + r.refusal + ')' : '') + '.', 'info');
        refresh();
      });
    }).catch(function (e) { banner('Move failed: ' + e.message); });
  }

  function peek(q) {
    state.peek = q;
    return api('POST', queuePath(q) + '/peek', { count: 10, excerpt_bytes: 2048 }).then(function (r) {
      var panel = $('peek');
      panel.hidden = false;
      var close = el('button', { text: 'Close', onclick: function () { panel.hidden = true; state.peek = null; } });
      var items = r.messages.map(function (m) {
        var headers = Object.keys(m.headers).filter(function (k) { return k !== 'destination'; })
          .map(function (k) { return k + ': ' + m.headers[k]; }).join('   ');
        return el('div', { class: 'message' }, [
          el('div', { class: 'mono' }, [m.message_id + ' · ' + bytes(m.body_bytes) + (m.persistent ? ' · persistent' : '') +
            (m.delivery_count ? ' · delivered ' + m.delivery_count + '×' : '')]),
          el('div', { class: 'mono result', text: headers }),
          el('pre', { text: (m.body_encoding === 'base64' ? '(base64) ' : '') + m.body_excerpt + (m.truncated ? ' …' : '') }),
        ]);
      });
      panel.replaceChildren(
        el('h3', {}, ['First ' + count(r.count) + ' of ' + count(r.messages_ready) + ' waiting in /queue/' + q.name + ' (nothing is consumed)', close]),
        r.messages.length ? el('div', {}, items) : el('div', { class: 'result', text: 'The queue has no waiting messages.' }));
    }).catch(function (e) { banner('Peek failed: ' + e.message); });
  }

  function loadTopics() {
    return api('GET', '/topics?page_size=500').then(function (page) {
      fill('topics', page.items.map(function (t) {
        return el('tr', {}, [td('/topic/' + t.name, 'mono'), td(t.vhost), td(count(t.subscribers), 'num')]);
      }), 3, 'No topic has subscribers right now.');
    });
  }

  function loadDurables() {
    return api('GET', '/subscriptions/durable?page_size=500').then(function (page) {
      fill('durables', page.items.map(function (d) {
        return el('tr', {}, [
          td(d.name, 'mono'), td(d.vhost), td(d.topic, 'mono'), td(d.owner || '–'),
          el('td', {}, [el('span', { class: 'badge ' + (d.active ? 'ok' : 'warn'), text: d.active ? 'active' : 'offline' })]),
          td(count(d.messages_ready), 'num'), td(count(d.messages_unacked), 'num'),
          el('td', { class: 'actions' }, [el('button', { class: 'danger', text: 'Delete', onclick: function () {
            confirmAction('Delete durable subscription ' + d.name + ' and its messages?').then(function (answer) {
              if (!answer) return;
              return api('DELETE', '/subscriptions/durable/' + encodeURIComponent(d.vhost) + '/' + encodeURIComponent(d.name)).then(refresh);
            }).catch(function (e) { banner('Delete failed: ' + e.message); });
          } })]),
        ]);
      }), 8, 'No durable subscriptions. A client creates one by subscribing with a durable name.');
    });
  }

  function stateBadge(item) {
    return el('td', {}, [el('span', { class: 'badge ' + (item.state === 'up' ? 'ok' : 'bad'), text: item.state })]);
  }
  function lastError(item) {
    return td(item.last_error ? item.last_error + ' (' + ago(item.last_error_at_ms) + ')' : '–', item.last_error ? 'wrap' : '');
  }

  function loadBridges() {
    return Promise.all([api('GET', '/webhooks'), api('GET', '/bridges')]).then(function (both) {
      fill('webhooks', both[0].items.map(function (w) {
        return el('tr', { 'data-webhook': w.name }, [
          td(w.name, 'mono'), td(w.source, 'mono'), td(w.url, 'mono'), stateBadge(w),
          td(count(w.delivered), 'num'), td(count(w.failures), 'num'), td(count(w.dead_lettered), 'num'),
          td(count(w.in_flight), 'num'), lastError(w),
        ]);
      }), 9, 'No webhooks. Add [[webhooks]] tables to the configuration (README, Bridges).');
      fill('bridges', both[1].items.map(function (b) {
        return el('tr', { 'data-bridge': b.name }, [
          td(b.name, 'mono'), td(b.direction), td(b.from + ' → ' + b.to, 'mono'), td(b.remote_url, 'mono'), stateBadge(b),
          td(count(b.delivered), 'num'), td(count(b.failures), 'num'), td(count(b.connections), 'num'), lastError(b),
        ]);
      }), 9, 'No STOMP bridges. Add [[bridges]] tables to the configuration (README, Bridges).');
    });
  }

  // ------------------------------------------------------------------ publish form

  $('publish-form').addEventListener('submit', function (event) {
    event.preventDefault();
    var form = event.target;
    var message = { destination: form.destination.value.trim(), body: form.body.value, persistent: form.persistent.checked };
    if (form.content_type.value.trim()) message.headers = { 'content-type': form.content_type.value.trim() };
    var result = $('publish-result');
    result.className = 'result';
    result.textContent = 'publishing…';
    api('POST', '/publish', message).then(function (r) {
      result.textContent = 'Published ' + r.messages.map(function (m) { return m.message_id; }).join(', ') + ' to ' + message.destination + '.';
    }).catch(function (e) { result.className = 'result bad'; result.textContent = e.message; });
  });

  // ------------------------------------------------------------------ polling and tabs

  var loaders = { connections: loadConnections, queues: loadQueues, topics: loadTopics, durables: loadDurables, bridges: loadBridges };

  function refresh() {
    if (state.busy) return Promise.resolve();
    state.busy = true;
    var work = [api('GET', '/overview').then(renderOverview)];
    if (loaders[state.tab]) work.push(loaders[state.tab]());
    return Promise.all(work).then(function () {
      if ($('banner').className === 'banner') banner(null);
      document.body.dataset.updated = String(Date.now());
    }).catch(function (e) {
      var health = $('health');
      health.textContent = 'unreachable';
      health.className = 'pill bad';
      banner(e.status === 401 || e.status === 403
        ? 'The dashboard needs an administrator (admin = true in [users.<name>]): ' + e.message
        : 'Cannot reach the broker: ' + e.message);
    }).then(function () { state.busy = false; });
  }

  function showTab() {
    var tab = (location.hash || '#overview').slice(1);
    if (!$('tab-' + tab)) tab = 'overview';
    state.tab = tab;
    document.querySelectorAll('.tab').forEach(function (s) { s.hidden = s.id !== 'tab-' + tab; });
    document.querySelectorAll('.tabs a').forEach(function (a) { a.classList.toggle('active', a.dataset.tab === tab); });
    refresh();
  }

  ['f-connections', 'f-queues'].forEach(function (id) {
    $(id).addEventListener('input', function () { state.pages[id.slice(2)] = 1; refresh(); });
  });
  window.addEventListener('hashchange', showTab);
  window.addEventListener('resize', drawCharts);
  showTab();
  state.timer = setInterval(refresh, INTERVAL);
  window.stampedeDashboard = { refresh: refresh, history: history };
})();
