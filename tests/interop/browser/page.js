// Browser side of the interop tests: a stompjs Client in Chromium, driven by
// playwright through window.stampede. The ws URL comes from ?ws=...; with ?fallback=1 the
// client uses the broker's /stampede-fallback.js shim as its webSocketFactory (the fallback
// page also deletes window.WebSocket first).
(function () {
  'use strict';
  const params = new URLSearchParams(location.search);
  const wsUrl = params.get('ws');
  const fallback = params.get('fallback') === '1';
  const received = [];
  let client = null;
  let socket = null;
  let n = 0;

  function show(text) {
    const li = document.createElement('li');
    li.textContent = text;
    document.getElementById('log').appendChild(li);
  }

  function setStatus(s) { document.getElementById('status').textContent = s; }

  function receipt(prefix) { n += 1; return prefix + '-' + n; }

  function waitReceipt(id) {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('no RECEIPT ' + id + ' within 10 s')), 10000);
      client.watchForReceipt(id, () => { clearTimeout(t); resolve(id); });
    });
  }

  function loadShim() {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = wsUrl.replace(/^ws/, 'http').replace(/\/ws$/, '') + '/stampede-fallback.js';
      script.onload = resolve;
      script.onerror = () => reject(new Error('could not load the shim from ' + script.src));
      document.head.appendChild(script);
    });
  }

  // The browser's own WebSocket (subprotocols v12/v11/v10.stomp), or the fallback shim's socket.
  function transport() {
    if (!fallback) return { brokerURL: wsUrl };
    const factory = StampedeFallback.factory(wsUrl);
    return { webSocketFactory: () => { socket = factory(); return socket; } };
  }

  window.stampede = {
    received,
    wsUrl,
    hasWebSocket: typeof window.WebSocket !== 'undefined',
    async connect() {
      document.getElementById('url').textContent = wsUrl;
      if (fallback) await loadShim();
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no CONNECTED within 10 s')), 10000);
        client = new StompJs.Client({
          ...transport(),
          reconnectDelay: 0,
          heartbeatIncoming: 10000,
          heartbeatOutgoing: 10000,
          onConnect: (frame) => {
            clearTimeout(t);
            setStatus('connected' + (fallback ? ' over the fallback' : '') + ' (STOMP ' + frame.headers.version + ')');
            resolve({
              version: frame.headers.version,
              protocol: client.webSocket.protocol,
              fallback: fallback && socket._inner instanceof StampedeFallback.FallbackSocket,
            });
          },
          onStompError: (frame) => { setStatus('ERROR ' + frame.headers.message); reject(new Error('STOMP ERROR ' + frame.headers.message)); },
          onWebSocketClose: (evt) => { setStatus('closed ' + evt.code); reject(new Error('WebSocket closed ' + evt.code)); },
        });
        client.activate();
      });
    },
    subscribe(destination) {
      const id = receipt('browser-sub');
      const done = waitReceipt(id);
      client.subscribe(destination, (m) => {
        received.push({ destination: m.headers.destination, body: m.body, headers: m.headers });
        show(m.headers.destination + ': ' + m.body);
      }, { receipt: id });
      return done;
    },
    publish(destination, body, headers) {
      const id = receipt('browser-send');
      const done = waitReceipt(id);
      client.publish({ destination, body, headers: Object.assign({}, headers || {}, { receipt: id }) });
      return done;
    },
    /** The fallback's event stream breaks (as on a lost network); nothing reconnects until resumeStream. */
    dropStream() {
      const inner = socket._inner;
      inner._source.onerror = null;
      inner._source.close();
      return inner._lastEventId;
    },
    /** Reopens the fallback's stream from the last event seen, as the shim does after an error. */
    resumeStream() { socket._inner._listen(); },
    disconnect() { return client ? client.deactivate() : Promise.resolve(); },
  };
})();
