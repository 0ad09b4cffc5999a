'use strict';
// Delayed delivery with @stomp/stompjs v7 over WebSocket: x-delay on SEND, and a SUBSCRIBE's
// x-redelivery-delay. Run: node --test tests/interop/node/delayed.test.js

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startBroker } = require('../lib/broker');
const { connectClient, disconnect, subscribe, publish, waitUntil, uid } = require('../lib/stomp-client');

// "Not before" tolerates the broker's wall clock against this process's clock.
const EARLY_MS = 15;
const LATE_MS = 1500;

describe('stompjs: delayed delivery', () => {
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

  it('x-delay on a queue delivers at its time, not before, without holding up the next message', async () => {
    const queue = `/queue/delay-${uid()}`;
    const { client } = await connect();
    const received = await subscribe(client, queue);
    const sent = performance.now();
    await publish(client, { destination: queue, body: 'later', headers: { 'x-delay': '700' } });
    await publish(client, { destination: queue, body: 'now' });
    const [first, second] = await received.waitFor(2);
    const elapsed = performance.now() - sent;
    assert.deepEqual([first.body, second.body], ['now', 'later']);
    assert.ok(elapsed >= 700 - EARLY_MS, `delivered after ${elapsed} ms`);
    assert.ok(elapsed <= 700 + LATE_MS, `delivered after ${elapsed} ms`);
    assert.ok(Number(second.headers['x-deliver-at']) <= Date.now());
  });

  it('x-delay on a topic reaches whoever subscribed by its time', async () => {
    const topic = `/topic/delay-${uid()}`;
    const { client } = await connect();
    const sent = performance.now();
    await publish(client, { destination: topic, body: 'held', headers: { 'x-delay': '500' } });
    const received = await subscribe(client, topic);
    const [message] = await received.waitFor(1);
    assert.equal(message.body, 'held');
    assert.ok(performance.now() - sent >= 500 - EARLY_MS);
  });

  it('a bad x-delay gets an ERROR naming the header', async () => {
    const { client, state } = await connect();
    client.publish({ destination: `/queue/bad-${uid()}`, body: 'x', headers: { 'x-delay': 'soon' } });
    const [error] = await waitUntil(() => state.stompErrors.length && state.stompErrors, 'an ERROR frame');
    assert.match(error.headers.message, /invalid x-delay header/);
  });
});
