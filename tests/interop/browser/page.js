// Browser side of the interop test: a stompjs Client in Chromium, driven by
// playwright through window.stampede. The ws URL comes from ?ws=...
(function () {
  'use strict';
  const wsUrl = new URLSearchParams(location.search).get('ws');
  const received = [];
  let client = null;
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

  window.stampede = {
    received,
    wsUrl,
    connect() {
      document.getElementById('url').textContent = wsUrl;
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error('no CONNECTED within 10 s')), 10000);
        client = new StompJs.Client({
          brokerURL: wsUrl, // the browser's own WebSocket, subprotocols v12/v11/v10.stomp
          reconnectDelay: 0,
          heartbeatIncoming: 10000,
          heartbeatOutgoing: 10000,
          onConnect: (frame) => {
            clearTimeout(t);
            setStatus('connected (STOMP ' + frame.headers.version + ')');
            resolve({ version: frame.headers.version, protocol: client.webSocket.protocol });
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
    disconnect() { return client ? client.deactivate() : Promise.resolve(); },
  };
})();
