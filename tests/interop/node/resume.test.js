'use strict';
// Session resumption with @stomp/stompjs v7 over WebSocket: the socket is destroyed under a
// client mid-stream (no DISCONNECT, no WebSocket Close); stompjs reconnects by itself, and
// `beforeConnect` puts the `session-resume-token` of the last CONNECTED into
// `connectHeaders['resume-token']`, so the broker hands the session back.
// Run: node --test tests/interop/node/resume.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const { Client } = require('@stomp/stompjs');
const WebSocket = require('ws');
const { startBroker } = require('../lib/broker');
const { connectClient, disconnect, publish, waitUntil, uid, SUBPROTOCOLS } = require('../lib/stomp-client');

describe('stompjs: session resumption', () => {
  let broker;
  before(async () => { broker = await startBroker(); });
  after(async () => { if (broker) await broker.stop(); });

  it('a client whose socket dies resumes with beforeConnect and gets its unacked queue messages again', async () => {
    const queue = `/queue/resume-${uid()}`;
    const { client: pub } = await connectClient(broker.wsUrl);
    const messages = [];
    const connects = [];
    let token;
    let socket;
    const client = new Client({
      webSocketFactory: () => { socket = new WebSocket(broker.wsUrl, SUBPROTOCOLS); return socket; },
      reconnectDelay: 200,
      heartbeatIncoming: 0,
      heartbeatOutgoing: 0,
      // An empty resume-token on the first CONNECT asks for a resumable session.
      beforeConnect: () => {
        client.connectHeaders['resume-token'] = token || '';
      },
      onConnect: (frame) => {
        token = frame.headers['session-resume-token'];
        connects.push(frame.headers);
        // The same explicit id every time: on a resumed session the broker takes this SUBSCRIBE
        // as already done, and stompjs needs it to route the messages to this callback.
        client.subscribe(queue, (m) => messages.push(m), { id: 'jobs', ack: 'client-individual' });
      },
    });
    client.activate();
    try {
      await waitUntil(() => connects.length === 1, 'first CONNECTED');
      assert.match(token, /^[0-9a-f]{32}$/);
      for (const body of ['m1', 'm2', 'm3']) await publish(pub, { destination: queue, body });
      await waitUntil(() => messages.length === 3, 'three messages');
      messages[0].ack();
      await new Promise((r) => setTimeout(r, 200));
      socket._socket.destroy(); // the network goes away: no DISCONNECT, no Close frame
      await publish(pub, { destination: queue, body: 'm4' });
      await waitUntil(() => connects.length === 2, 'the reconnect');
      assert.equal(connects[1]['session-resumed'], 'true', JSON.stringify(connects[1]));
      assert.equal(connects[1].session, connects[0].session);
      await waitUntil(() => messages.length >= 6, 'the unacked messages again, then m4');
      const after = messages.slice(3);
      assert.deepEqual(after.map((m) => m.body), ['m2', 'm3', 'm4']);
      assert.equal(after[0].headers.redelivered, 'true');
      assert.equal(after[1].headers.redelivered, 'true');
      for (const m of after) m.ack();
      await publish(pub, { destination: queue, body: 'm5' });
      await waitUntil(() => messages.length === 7, 'm5');
      assert.equal(messages[6].body, 'm5');
      assert.equal(messages[6].headers.redelivered, undefined);
    } finally {
      await disconnect(client);
      await disconnect(pub);
    }
  });
});
