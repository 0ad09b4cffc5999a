'use strict';
// The browser demo served by the broker (`--demo`) in headless Chromium: two pages chat with
// each other and see each other online, a page that joins later gets the chat's history, the
// ticker updates, a job round-trips through /queue/demo.jobs and a /temp-queue/; a third page
// does the same over the SSE fallback (?transport=sse), and one with no WebSocket at all falls
// back by itself. Screenshot into the test's temporary directory (and docs/demo.png with
// STAMPEDE_DOCS_SCREENSHOTS=1). Run: node --test tests/interop/browser/demo.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startBroker, REPO_ROOT } = require('../lib/broker');
const { openBrowser } = require('../lib/browser');

describe('browser demo at /demo/ (Chromium, --demo)', () => {
  let broker, plain, browser, ann, ben, waitInBrowser, pageErrors;

  const waitOn = (page, pred, arg, what) =>
    page.waitForFunction(pred, arg, { timeout: 10000 }).catch((e) => {
      throw new Error(`timed out waiting for ${what}: ${e.message.split('\n')[0]}; page errors: ${pageErrors}`);
    });

  async function open(query) {
    const page = await browser.newPage();
    await page.goto(`${broker.wsHttpUrl}/demo/?${query}`, { timeout: 10000 });
    await waitOn(page, () => window.stampedeDemo && window.stampedeDemo.connected, null, `${query} to connect`);
    return page;
  }

  async function say(page, text) {
    await page.fill('#chat-text', text);
    await page.click('#chat-form button');
  }

  before(async () => {
    broker = await startBroker({ args: ['--demo'] });
    plain = await startBroker();
    browser = await openBrowser({ viewport: { width: 1280, height: 800 } });
    ({ waitFor: waitInBrowser, errors: pageErrors } = browser);
    ann = browser.page;
    await ann.goto(`${broker.wsHttpUrl}/demo/?nick=ann`, { timeout: 10000 });
    await waitInBrowser(() => window.stampedeDemo && window.stampedeDemo.connected, null, 'ann to connect');
    ben = await open('nick=ben');
  });

  after(async () => {
    if (browser) await browser.close();
    if (broker) await broker.stop();
    if (plain) await plain.stop();
  });

  it('is served only with --demo, with the vendored stompjs and its license', async () => {
    const off = await fetch(`${plain.wsHttpUrl}/demo/`);
    assert.equal(off.status, 404);
    assert.match(await off.text(), /--demo/);
    const license = await fetch(`${broker.wsHttpUrl}/demo/stompjs-LICENSE.txt`);
    assert.equal(license.status, 200);
    assert.match(await license.text(), /Apache License/);
    assert.equal(await ann.evaluate(() => window.stampedeDemo.transport), 'WebSocket');
  });

  it('two pages chat with each other and see each other online', async () => {
    await waitOn(ann, () => 'ben' in window.stampedeDemo.online, null, 'ann to see ben online');
    await waitOn(ben, () => 'ann' in window.stampedeDemo.online, null, 'ben to see ann online');
    await say(ann, 'hello ben');
    await waitOn(ben, () => window.stampedeDemo.chat.some((c) => c.nick === 'ann' && c.text === 'hello ben'), null, 'ben to get ann\'s message');
    await say(ben, 'hi ann!');
    await waitOn(ann, () => window.stampedeDemo.chat.some((c) => c.nick === 'ben' && c.text === 'hi ann!'), null, 'ann to get ben\'s reply');
    assert.match(await ann.textContent('#online'), /ann, ben/);
  });

  it('the ticker updates', async () => {
    const first = await ann.evaluate(() => window.stampedeDemo.ticks);
    await waitOn(ann, (n) => window.stampedeDemo.ticks >= n + 12, first, 'more price ticks');
    assert.equal(await ann.locator('#prices tr').count(), 6);
  });

  it('a job round-trips through the worker and a /temp-queue/', async () => {
    await ann.fill('#job-number', '360360');
    await ann.click('#job-form button');
    await waitOn(ann, () => Object.values(window.stampedeDemo.jobs).some((j) => j.result), null, 'the job\'s answer');
    const job = await ann.evaluate(() => Object.values(window.stampedeDemo.jobs).find((j) => j.result));
    assert.deepEqual(job.result.factors, [2, 2, 2, 3, 3, 5, 7, 11, 13]);
    assert.match(await ann.textContent('#job-log'), /360360 = 2 × 2 × 2 × 3 × 3 × 5 × 7 × 11 × 13/);
  });

  it('over the SSE fallback: a late joiner gets the history, chats, and runs a job', async () => {
    const cy = await open('nick=cy&transport=sse');
    assert.equal(await cy.evaluate(() => window.stampedeDemo.transport), 'SSE fallback');
    await waitOn(cy, () => window.stampedeDemo.chat.some((c) => c.text === 'hello ben' && c.history), null, 'the chat history');
    await say(cy, 'cy here, without WebSocket');
    await waitOn(ann, () => window.stampedeDemo.chat.some((c) => c.nick === 'cy'), null, 'ann to get cy\'s message');
    await cy.fill('#job-number', '97');
    await cy.click('#job-form button');
    await waitOn(cy, () => Object.values(window.stampedeDemo.jobs).some((j) => j.result), null, 'cy\'s job answer');
    await waitOn(cy, () => window.stampedeDemo.ticks > 3, null, 'ticks over SSE');
  });

  it('a browser without WebSocket falls back by itself', async () => {
    const page = await browser.newPage();
    await page.addInitScript(() => { delete window.WebSocket; });
    await page.goto(`${broker.wsHttpUrl}/demo/?nick=dee`, { timeout: 10000 });
    await waitOn(page, () => window.stampedeDemo && window.stampedeDemo.connected, null, 'dee to connect');
    assert.equal(await page.evaluate(() => window.stampedeDemo.transport), 'SSE fallback');
    await waitOn(ann, () => 'dee' in window.stampedeDemo.online, null, 'ann to see dee online');
  });

  it('renders (screenshot)', async () => {
    await say(ben, 'the ticker moves every 700 ms');
    await ann.fill('#job-number', '1234567890');
    await ann.click('#job-form button');
    await waitOn(ann, () => Object.values(window.stampedeDemo.jobs).filter((j) => j.result).length >= 2, null, 'the second job');
    await waitOn(ann, () => window.stampedeDemo.chat.length >= 4, null, 'the whole chat');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stampede-demo-'));
    const shot = path.join(dir, 'demo.png');
    await ann.screenshot({ path: shot });
    assert.ok(fs.statSync(shot).size > 10000, 'screenshot is suspiciously small');
    if (process.env.STAMPEDE_DOCS_SCREENSHOTS) {
      fs.mkdirSync(path.join(REPO_ROOT, 'docs'), { recursive: true });
      await ann.screenshot({ path: path.join(REPO_ROOT, 'docs', 'demo.png') });
    }
    console.log(`# screenshot: ${shot}`);
    assert.deepEqual(pageErrors, []);
  });
});
