'use strict';
// Beyond other brokers, with @stomp/stompjs v7 over WebSocket: selectors, consumer priority,
// exclusive consumers and queue browsing, opt-in by SUBSCRIBE headers.
// Run: node --test tests/interop/node/features.test.js

const { describe, it, before, after, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { startBroker } = require('../lib/broker');
const { connectClient, disconnect, subscribe, publish, waitUntil, uid } = require('../lib/stomp-client');

describe('stompjs: features beyond other brokers', () => {
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

  it('a topic subscription with a selector gets only the matching messages', async () => {
    const topic = `/topic/sel-${uid()}`;
    const { client } = await connect();
    const { client: pub } = await connect();
    const selected = await subscribe(client, topic, { selector: "symbol LIKE 'AC%' AND price >= 10" });
    const all = await subscribe(client, topic);
    const sent = [['ACME', '12'], ['ACME', '9.5'], ['BETA', '50'], ['ACE', '10']];
    for (const [symbol, price] of sent) {
      await publish(pub, { destination: topic, body: `${symbol}@${price}`, headers: { symbol, price } });
    }
    await all.waitFor(4);
    const [first, second] = await selected.waitFor(2);
    assert.deepEqual([first.body, second.body], ['ACME@12', 'ACE@10']);
    assert.equal(selected.messages.length, 2);
  });

  it('a queue consumer with a selector leaves the other messages for other consumers', async () => {
    const queue = `/queue/sel-${uid()}`;
    const { client } = await connect();
    const { client: pub } = await connect();
    const urgent = await subscribe(client, queue, { selector: 'urgent = TRUE' });
    await publish(pub, { destination: queue, body: 'later', headers: { urgent: 'false' } });
    await publish(pub, { destination: queue, body: 'now', headers: { urgent: 'true' } });
    const [message] = await urgent.waitFor(1);
    assert.equal(message.body, 'now');
    const rest = await subscribe(client, queue);
    const [left] = await rest.waitFor(1);
    assert.equal(left.body, 'later');
  });

  it('a browser sees the waiting messages, then an empty MESSAGE with browser:end', async () => {
    const queue = `/queue/browse-${uid()}`;
    const { client } = await connect();
    for (const body of ['b1', 'b2']) await publish(client, { destination: queue, body });
    const browser = await subscribe(client, queue, { browser: 'true' });
    const seen = await browser.waitFor(3);
    assert.deepEqual(seen.map((m) => m.body), ['b1', 'b2', '']);
    assert.equal(seen[2].headers.browser, 'end');
    const consumer = await subscribe(client, queue);
    assert.deepEqual((await consumer.waitFor(2)).map((m) => m.body), ['b1', 'b2']);
  });

  it('the higher x-priority consumer gets messages first', async () => {
    const queue = `/queue/prio-${uid()}`;
    const { client: low } = await connect();
    const { client: high } = await connect();
    const lows = await subscribe(low, queue, { 'x-priority': '0' });
    const highs = await subscribe(high, queue, { 'x-priority': '5' });
    for (const body of ['p1', 'p2', 'p3']) await publish(low, { destination: queue, body });
    assert.deepEqual((await highs.waitFor(3)).map((m) => m.body), ['p1', 'p2', 'p3']);
    assert.equal(lows.messages.length, 0);
  });

  it('a bad selector gets an ERROR naming the header and the position', async () => {
    const { client, state } = await connect();
    client.subscribe(`/queue/bad-${uid()}`, () => {}, { selector: 'price > > 3' });
    const [error] = await waitUntil(() => state.stompErrors.length && state.stompErrors, 'an ERROR frame');
    assert.match(error.headers.message, /invalid selector header: at position 9/);
  });
});
