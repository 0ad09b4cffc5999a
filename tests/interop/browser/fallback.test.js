'use strict';
// Headless Chromium with no WebSocket at all: stompjs reaches the broker through the
// SSE + POST fallback and the shim the broker serves at /stampede-fallback.js, and exchanges
// topic and queue messages with a stomp.py backend over TCP, including an event stream that
// breaks and resumes without losing or repeating a message. Run: node --test tests/interop/browser/

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startBroker } = require('../lib/broker');
const { startBackend } = require('../lib/backend');
const { startStaticServer, openBrowser } = require('../lib/browser');
const { uid } = require('../lib/stomp-client');

describe('browser without WebSocket (Chromium + stompjs + /stampede-fallback.js) <-> stomp.py', () => {
  let broker, server, backend, browser, page, pageErrors, waitInBrowser;

  before(async () => {
    broker = await startBroker();
    server = await startStaticServer(['fallback.html', 'page.js']);
    backend = await startBackend(broker);
    browser = await openBrowser();
    ({ page, errors: pageErrors, waitFor: waitInBrowser } = browser);
    // The page is served from another origin than the broker: the fallback's CORS is exercised too.
    const url = `http://127.0.0.1:${server.address().port}/fallback.html?fallback=1&ws=${encodeURIComponent(broker.wsUrl)}`;
    await page.goto(url, { timeout: 10000 });
  });

  after(async () => {
    if (browser) await browser.close();
    if (backend) await backend.stop();
    if (server) server.close();
    if (broker) await broker.stop();
  });

  it('the page has no WebSocket, and stompjs connects with STOMP 1.2 through the fallback', async () => {
    assert.equal(await page.evaluate(() => window.stampede.hasWebSocket), false);
    const info = await page.evaluate(() => window.stampede.connect());
    assert.equal(info.version, '1.2');
    assert.equal(info.fallback, true);
  });

  it('topic: the browser receives what the stomp.py backend publishes', async () => {
    const topic = `/topic/sse-${uid()}`;
    await page.evaluate((d) => window.stampede.subscribe(d), topic);
    await backend.request({ op: 'send', destination: topic, body: 'über SSE', headers: { 'x-custom': 'a:b' } });
    await waitInBrowser((d) => window.stampede.received.some((m) => m.destination === d), topic, `a message on ${topic}`);
    const msg = await page.evaluate((d) => window.stampede.received.find((m) => m.destination === d), topic);
    assert.equal(msg.body, 'über SSE');
    assert.equal(msg.headers['x-custom'], 'a:b');
  });

  it('queue: messages flow both ways between the browser and the stomp.py backend', async () => {
    const toBrowser = `/queue/sse-in-${uid()}`;
    await backend.request({ op: 'send', destination: toBrowser, body: 'queued by python' });
    await page.evaluate((d) => window.stampede.subscribe(d), toBrowser);
    await waitInBrowser((d) => window.stampede.received.some((m) => m.destination === d), toBrowser, 'the queued message');
    const fromBrowser = `/queue/sse-out-${uid()}`;
    await page.evaluate(([d, b]) => window.stampede.publish(d, b, { 'x-origin': 'chromium' }), [fromBrowser, 'posted by the browser']);
    await backend.request({ op: 'subscribe', destination: fromBrowser, id: `py-${uid()}` });
    const got = await backend.waitMessage((e) => e.destination === fromBrowser);
    assert.equal(got.body, 'posted by the browser');
    assert.equal(got.headers['x-origin'], 'chromium');
  });

  it('a dropped event stream resumes with Last-Event-ID: nothing lost, nothing repeated', async () => {
    const topic = `/topic/sse-resume-${uid()}`;
    await page.evaluate((d) => window.stampede.subscribe(d), topic);
    const last = await page.evaluate(() => window.stampede.dropStream());
    assert.ok(last, 'events carry ids');
    for (let i = 0; i < 10; i++) {
      await backend.request({ op: 'send', destination: topic, body: `while away ${i}` });
    }
    await page.evaluate(() => window.stampede.resumeStream());
    await waitInBrowser((d) => window.stampede.received.filter((m) => m.destination === d).length >= 10, topic, 'the 10 messages sent while away');
    await new Promise((r) => setTimeout(r, 300));
    const bodies = await page.evaluate((d) => window.stampede.received.filter((m) => m.destination === d).map((m) => m.body), topic);
    assert.deepEqual(bodies, Array.from({ length: 10 }, (_, i) => `while away ${i}`));
  });

  it('renders what it received (screenshot) with no page errors', async () => {
    const shot = path.join(os.tmpdir(), `stampede-fallback-${process.pid}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(fs.statSync(shot).size > 1000);
    assert.match(await page.textContent('#status'), /connected over the fallback/);
    console.log(`# screenshot: ${shot}`);
    await page.evaluate(() => window.stampede.disconnect());
    assert.deepEqual(pageErrors, []);
  });
});
