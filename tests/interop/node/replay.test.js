'use strict';
// Last-value and replay topics with @stomp/stompjs v7 over WebSocket: x-retain:true on SEND,
// x-replay on SUBSCRIBE (README, "Beyond other brokers").
// Run: node --test tests/interop/node/replay.test.js

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startBroker } = require('../lib/broker');
const { connectClient, disconnect, subscribe, publish, uid } = require('../lib/stomp-client');

describe('stompjs: last-value and replay topics', () => {
  let broker;
  let clients = [];

  const connect = async () => {
    const c = await connectClient(broker.wsUrl);
    clients.push(c.client);
    return c;
  };

  before(async () => { broker = await startBroker(); });
  after(async () => { if (broker) await broker.stop(); });
  afterEach(async () => {
    await Promise.all(clients.map((c) => disconnect(c)));
    clients = [];
    if (broker && !broker.alive()) console.error(`broker died:\n${broker.logTail()}`);
  });

  it('a dashboard subscribing with x-replay:last gets the current value, then the updates', async () => {
    const topic = `/topic/status-${uid()}`;
    const { client: pub } = await connect();
    for (const body of ['starting', 'up']) {
      await publish(pub, { destination: topic, body, headers: { 'x-retain': 'true' } });
    }
    const { client } = await connect();
    const dashboard = await subscribe(client, topic, { 'x-replay': 'last' });
    await publish(pub, { destination: topic, body: 'degraded', headers: { 'x-retain': 'true' } });
    const seen = await dashboard.waitFor(2);
    assert.deepEqual(seen.map((m) => m.body), ['up', 'degraded']);
  });
});
