'use strict';
// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core)
// loads a page that uses the stompjs UMD bundle over the browser's own
// WebSocket, and exchanges messages with a stomp.py backend over TCP, on a
// topic and on a queue, in both directions. Run: node --test tests/interop/browser/

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startBroker } = require('../lib/broker');
const { startBackend } = require('../lib/backend');
const { startStaticServer, openBrowser } = require('../lib/browser');
const { uid } = require('../lib/stomp-client');

describe('browser (Chromium + stompjs UMD) <-> stomp.py backend', () => {
  let broker, server, backend, browser, page, pageErrors, waitInBrowser;

  before(async () => {
    broker = await startBroker();
    server = await startStaticServer(['index.html', 'page.js']);
    backend = await startBackend(broker);
    browser = await openBrowser();
    ({ page, errors: pageErrors, waitFor: waitInBrowser } = browser);
    const url = `http://127.0.0.1:${server.address().port}/index.html?ws=${encodeURIComponent(broker.wsUrl)}`;
    await page.goto(url, { timeout: 10000 });
  });

  after(async () => {
    if (browser) await browser.close();
    if (backend) await backend.stop();
    if (server) server.close();
    if (broker) await broker.stop();
  });

  it('loads the stompjs UMD bundle and connects over the browser WebSocket with STOMP 1.2', async () => {
    assert.equal(await page.evaluate(() => typeof StompJs.Client), 'function');
    const info = await page.evaluate(() => window.stampede.connect());
    assert.equal(info.protocol, 'v12.stomp');
    assert.equal(info.version, '1.2');
  });

  it('topic: the browser receives what the stomp.py backend publishes', async () => {
    const topic = `/topic/to-browser-${uid()}`;
    await page.evaluate((d) => window.stampede.subscribe(d), topic);
    await backend.request({ op: 'send', destination: topic, body: 'topic hello from python', headers: { 'x-custom': 'a:b' } });
    await waitInBrowser((d) => window.stampede.received.some((m) => m.destination === d), topic, `a message on ${topic}`);
    const msg = await page.evaluate((d) => window.stampede.received.find((m) => m.destination === d), topic);
    assert.equal(msg.body, 'topic hello from python');
    assert.equal(msg.headers['x-custom'], 'a:b');
  });

  it('topic: the stomp.py backend receives what the browser publishes', async () => {
    const topic = `/topic/from-browser-${uid()}`;
    await backend.request({ op: 'subscribe', destination: topic, id: `py-${uid()}` });
    await page.evaluate(([d, b]) => window.stampede.publish(d, b, { 'x-origin': 'chromium' }), [topic, 'topic hello from the browser']);
    const got = await backend.waitMessage((e) => e.destination === topic);
    assert.equal(got.body, 'topic hello from the browser');
    assert.equal(got.headers['x-origin'], 'chromium');
  });

  it('queue: the browser receives what the stomp.py backend queued before it subscribed', async () => {
    const queue = `/queue/to-browser-${uid()}`;
    await backend.request({ op: 'send', destination: queue, body: 'queued by python' });
    await page.evaluate((d) => window.stampede.subscribe(d), queue);
    await waitInBrowser((d) => window.stampede.received.some((m) => m.destination === d), queue, `a message on ${queue}`);
    const msg = await page.evaluate((d) => window.stampede.received.find((m) => m.destination === d), queue);
    assert.equal(msg.body, 'queued by python');
  });

  it('queue: the stomp.py backend receives what the browser queued before it subscribed', async () => {
    const queue = `/queue/from-browser-${uid()}`;
    await page.evaluate(([d, b]) => window.stampede.publish(d, b), [queue, 'queued by the browser']);
    await backend.request({ op: 'subscribe', destination: queue, id: `py-${uid()}` });
    const got = await backend.waitMessage((e) => e.destination === queue);
    assert.equal(got.body, 'queued by the browser');
  });

  it('renders the received messages (screenshot sanity check)', async () => {
    const shot = path.join(os.tmpdir(), `stampede-browser-interop-${process.pid}.png`);
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(fs.statSync(shot).size > 1000, 'screenshot is suspiciously small');
    const items = await page.locator('#log li').count();
    assert.ok(items >= 2, `expected the page to list received messages, found ${items}`);
    assert.match(await page.textContent('#status'), /connected/);
    console.log(`# screenshot: ${shot}`);
    assert.deepEqual(pageErrors, []);
  });
});
