'use strict';
// @stomp/stompjs v7 (the browser client) over WebSocket (`ws` package) against
// the real Stampede release broker. Run: node --test tests/interop/node/

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const WebSocket = require('ws');
const { Versions } = require('@stomp/stompjs');
const { startBroker, sleep } = require('../lib/broker');
const { connectClient, disconnect, subscribe, publish, awaitReceipt, uid } = require('../lib/stomp-client');
const { startBackend } = require('../lib/backend');

describe('stompjs over WebSocket', () => {
  let broker;
  let clients = [];

  const connect = async (opts) => {
    const c = await connectClient(broker.wsUrl, opts);
    clients.push(c.client);
    return c;
  };

  before(async () => { broker = await startBroker(); });
  after(async () => { if (broker) await broker.stop(); });
  afterEach(async (t) => {
    await Promise.all(clients.map((c) => disconnect(c)));
    clients = [];
    if (broker && !broker.alive()) console.error(`broker died:\n${broker.logTail()}`);
  });

  it('connects over WS and negotiates the v12.stomp subprotocol and STOMP 1.2', async () => {
    const { client, frame, state } = await connect();
    assert.equal(state.socket.protocol, 'v12.stomp');
    assert.equal(frame.headers.version, '1.2');
    assert.equal(client.connectedVersion, '1.2');
    assert.ok(frame.headers.session, 'CONNECTED needs a session header');
    assert.ok(frame.headers.server, 'CONNECTED should carry a server header');
  });

  it('negotiates STOMP 1.1 when the client offers only v11.stomp', async () => {
    const url = broker.wsUrl;
    const c = await connect({
      stompVersions: new Versions(['1.1']),
      webSocketFactory: () => new WebSocket(url, ['v11.stomp']),
    });
    assert.equal(c.client.webSocket.protocol, 'v11.stomp');
    assert.equal(c.frame.headers.version, '1.1');
  });

  it('rejects a WebSocket handshake on the wrong path', async () => {
    const bad = `ws://127.0.0.1:${broker.wsPort}/not-the-stomp-path-${uid()}`;
    const outcome = await new Promise((resolve) => {
      const ws = new WebSocket(bad, ['v12.stomp']);
      const t = setTimeout(() => { ws.terminate(); resolve('timeout'); }, 10000);
      ws.on('open', () => { clearTimeout(t); ws.close(); resolve('open'); });
      ws.on('error', () => { clearTimeout(t); resolve('error'); });
    });
    assert.equal(outcome, 'error');
  });

  it('delivers a topic message to every subscriber', async () => {
    const topic = `/topic/js-${uid()}`;
    const { client: a } = await connect();
    const { client: b } = await connect();
    const { client: pub } = await connect();
    const ca = await subscribe(a, topic);
    const cb = await subscribe(b, topic);
    await publish(pub, { destination: topic, body: 'hello from stompjs', headers: { 'x-custom': 'a:b' } });
    const [ma] = await ca.waitFor(1);
    const [mb] = await cb.waitFor(1);
    for (const m of [ma, mb]) {
      assert.equal(m.body, 'hello from stompjs');
      assert.equal(m.headers.destination, topic);
      assert.equal(m.headers['x-custom'], 'a:b');
    }
  });

  it('queue with client-individual ack redelivers only the unacked message', async () => {
    const q = `/queue/js-ci-${uid()}`;
    const { client: pub } = await connect();
    await publish(pub, { destination: q, body: 'first' });
    await publish(pub, { destination: q, body: 'second' });
    const { client: c1 } = await connect();
    const col1 = await subscribe(c1, q, { ack: 'client-individual' });
    const msgs = await col1.waitFor(2);
    assert.deepEqual(msgs.map((m) => m.body), ['first', 'second']);
    assert.ok(msgs[0].headers.ack, '1.2 MESSAGE in client-individual mode needs an ack header');
    const ackReceipt = `ack-${uid()}`;
    const acked = awaitReceipt(c1, ackReceipt, 'ACK');
    msgs[0].ack({ receipt: ackReceipt });
    await acked;
    await disconnect(c1);
    const { client: c2 } = await connect();
    const col2 = await subscribe(c2, q, { ack: 'client-individual' });
    const [again] = await col2.waitFor(1);
    assert.equal(again.body, 'second');
    assert.equal(again.headers.redelivered, 'true');
    await publish(pub, { destination: q, body: 'sentinel' });
    await col2.waitFor(2);
    assert.deepEqual(col2.messages.map((m) => m.body), ['second', 'sentinel']);
  });

  it('a frame larger than 8 KiB split into 1 KiB WebSocket messages arrives intact', async () => {
    const q = `/queue/js-big-${uid()}`;
    const { client: rx } = await connect();
    const col = await subscribe(rx, q);
    const { client: tx } = await connect({ splitLargeFrames: true, maxWebSocketChunkSize: 1024 });
    let body = '';
    for (let i = 0; body.length < 20 * 1024; i++) body += `line ${i} of a large STOMP frame\n`;
    assert.ok(body.length > 8 * 1024);
    await publish(tx, { destination: q, body });
    const [m] = await col.waitFor(1);
    assert.equal(m.body.length, body.length);
    assert.equal(m.body, body);
  });

  it('heart-beats of 1000 ms keep an idle connection alive for 3.5 s', async () => {
    const { client, frame, state } = await connect({ heartbeatIncoming: 1000, heartbeatOutgoing: 1000 });
    const [sx, sy] = (frame.headers['heart-beat'] || '0,0').split(',').map(Number);
    assert.ok(sx > 0, `server offers no outgoing heart-beats: heart-beat:${frame.headers['heart-beat']}`);
    assert.ok(sy > 0, `server does not want client heart-beats: heart-beat:${frame.headers['heart-beat']}`);
    await sleep(3500);
    assert.equal(state.closed, false, `connection closed while idle: ${JSON.stringify(state.closeEvents)}`);
    assert.equal(client.connected, true);
    assert.ok(state.pongs >= 1, `no incoming heart-beat observed in 3.5 s (server heart-beat:${sx},${sy})`);
    assert.ok(state.pings >= 1, 'client sent no heart-beat');
    // and the connection still works
    const q = `/queue/js-hb-${uid()}`;
    const col = await subscribe(client, q);
    await publish(client, { destination: q, body: 'still alive' });
    const [m] = await col.waitFor(1);
    assert.equal(m.body, 'still alive');
  });

  it('a binary body with bytes 0..255 round-trips', async () => {
    const q = `/queue/js-bin-${uid()}`;
    const { client } = await connect();
    const col = await subscribe(client, q);
    const bytes = new Uint8Array(256);
    for (let i = 0; i < 256; i++) bytes[i] = i;
    await publish(client, { destination: q, binaryBody: bytes, headers: { 'content-type': 'application/octet-stream' } });
    const [m] = await col.waitFor(1);
    assert.equal(m.headers['content-type'], 'application/octet-stream');
    assert.equal(m.headers['content-length'], '256');
    assert.deepEqual(Array.from(m.binaryBody), Array.from(bytes));
  });

  it('cross-client: stompjs over WS and stomp.py over TCP exchange messages both ways', async () => {
    const backend = await startBackend(broker);
    try {
      const { client } = await connect();
      const toJs = `/topic/py-to-js-${uid()}`;
      const toPy = `/queue/js-to-py-${uid()}`;
      const col = await subscribe(client, toJs);
      await backend.request({ op: 'send', destination: toJs, body: 'from stomp.py', headers: { 'x-from': 'python' } });
      const [m] = await col.waitFor(1);
      assert.equal(m.body, 'from stomp.py');
      assert.equal(m.headers['x-from'], 'python');
      await publish(client, { destination: toPy, body: 'from stompjs', headers: { 'x-from': 'node' } });
      await backend.request({ op: 'subscribe', destination: toPy, id: 'py-sub' });
      const got = await backend.waitMessage((e) => e.destination === toPy);
      assert.equal(got.body, 'from stompjs');
      assert.equal(got.headers['x-from'], 'node');
    } finally {
      await backend.stop();
    }
  });
});
