'use strict';
// Helpers around the real @stomp/stompjs v7 Client over the `ws` package.
// Every wait is bounded (default 10 s) and fails with a description.

const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');

const WAIT_MS = 10000;
const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];
let counter = 0;

const uid = () => Math.random().toString(16).slice(2, 12);
const nextId = (prefix) => `${prefix}-${++counter}-${uid()}`;

async function waitUntil(pred, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = pred();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function withTimeout(promise, ms, what) {
  let t;
  return Promise.race([
    promise,
    new Promise((_, reject) => { t = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms); }),
  ]).finally(() => clearTimeout(t));
}

// Connect a stompjs Client; resolves { client, frame, state } on CONNECTED.
// state records heart-beats seen (pongs = incoming, pings = outgoing), STOMP
// ERRORs, WebSocket closes and the raw socket (for the negotiated subprotocol).
function connectClient(url, opts = {}, ms = WAIT_MS) {
  const state = { pongs: 0, pings: 0, closed: false, closeEvents: [], stompErrors: [], wsErrors: [], socket: null };
  return new Promise((resolve, reject) => {
    let timer = null;
    const client = new Client({
      webSocketFactory: () => {
        state.socket = new WebSocket(url, SUBPROTOCOLS);
        return state.socket;
      },
      reconnectDelay: 0,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      connectionTimeout: ms,
      debug: (msg) => {
        if (msg === '<<< PONG') state.pongs++;
        else if (msg === '>>> PING') state.pings++;
        if (process.env.STOMP_DEBUG) console.error(`[stompjs] ${msg}`);
      },
      ...opts,
      onConnect: (frame) => { clearTimeout(timer); resolve({ client, frame, state }); },
      onStompError: (frame) => {
        state.stompErrors.push(frame);
        reject(new Error(`STOMP ERROR: ${frame.headers.message} ${frame.body}`));
      },
      onWebSocketClose: (evt) => {
        state.closed = true;
        state.closeEvents.push({ code: evt.code, reason: String(evt.reason || '') });
        reject(new Error(`WebSocket closed before CONNECTED (code ${evt.code})`));
      },
      onWebSocketError: (e) => { state.wsErrors.push(String(e && (e.message || e.type || e))); },
    });
    timer = setTimeout(() => {
      client.deactivate({ force: true }).catch(() => {});
      reject(new Error(`timed out after ${ms} ms waiting for CONNECTED from ${url}; ws errors: ${state.wsErrors}`));
    }, ms);
    client.activate();
  });
}

async function disconnect(client, ms = WAIT_MS) {
  if (!client) return;
  try {
    await withTimeout(client.deactivate(), ms, 'client.deactivate()');
  } catch {
    await client.deactivate({ force: true }).catch(() => {});
  }
}

function awaitReceipt(client, receipt, what, ms = WAIT_MS) {
  return withTimeout(new Promise((resolve) => client.watchForReceipt(receipt, resolve)), ms, `RECEIPT for ${what}`);
}

// Subscribe and wait for the broker's RECEIPT; returns a collector.
async function subscribe(client, destination, headers = {}) {
  const messages = [];
  const receipt = nextId('sub-receipt');
  const done = awaitReceipt(client, receipt, `SUBSCRIBE ${destination}`);
  const sub = client.subscribe(destination, (m) => messages.push(m), { ...headers, receipt });
  await done;
  return {
    sub,
    messages,
    waitFor: (n, what, ms = WAIT_MS) =>
      waitUntil(() => messages.length >= n && messages, what || `${n} message(s) on ${destination}`, ms),
  };
}

async function publish(client, params) {
  const receipt = nextId('send-receipt');
  const done = awaitReceipt(client, receipt, `SEND ${params.destination}`);
  client.publish({ ...params, headers: { ...(params.headers || {}), receipt } });
  await done;
}

module.exports = { connectClient, disconnect, subscribe, publish, awaitReceipt, waitUntil, withTimeout, uid, nextId, SUBPROTOCOLS, WAIT_MS };
