'use strict';
// The management dashboard in headless Chromium: an administrator logs in (HTTP Basic, the
// API's own authentication), sees a queue a test publish created with its depth, sees the
// depth and the overview's counts update without a reload, peeks and purges the queue from the
// UI, and the page fits a phone's width. Screenshots go to the test's temporary directory
// (and to docs/dashboard.png with STAMPEDE_DOCS_SCREENSHOTS=1).
// Run: node --test tests/interop/browser/dashboard.test.js

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { startBroker, passwordHash, REPO_ROOT } = require('../lib/broker');
const { openBrowser } = require('../lib/browser');
const { connectClient, disconnect, subscribe, uid } = require('../lib/stomp-client');

const ADMIN = { username: 'alice', password: 'wonderland' };
const USER = { username: 'bob', password: 'builder' };

function basic({ username, password }) {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

describe('management dashboard (Chromium)', () => {
  let broker, browser, page, pageErrors, waitInBrowser, clients = [];
  const queue = `dash-${uid()}`;

  async function publish(destination, body, who = ADMIN) {
    const response = await fetch(`${broker.httpUrl}/api/v1/publish`, {
      method: 'POST',
      headers: { authorization: basic(who), 'content-type': 'application/json' },
      body: JSON.stringify({ destination, body }),
    });
    assert.equal(response.status, 202, await response.text());
  }

  async function readyCount() {
    const text = await page.locator(`tr[data-queue="${queue}"] td.ready`).textContent();
    return Number(text.replace(/,/g, ''));
  }

  before(async () => {
    const config = [
      '[users.alice]', `password_hash = "${passwordHash(ADMIN.password)}"`, 'admin = true', '',
      '[users.bob]', `password_hash = "${passwordHash(USER.password)}"`, '',
    ].join('\n');
    broker = await startBroker({ http: true, config });
    browser = await openBrowser({ httpCredentials: ADMIN, viewport: { width: 1280, height: 800 } });
    ({ page, errors: pageErrors, waitFor: waitInBrowser } = browser);
  });

  after(async () => {
    for (const c of clients) await disconnect(c);
    if (browser) await browser.close();
    if (broker) await broker.stop();
  });

  it('the page needs an administrator: 401 with a Basic challenge without credentials, 403 for a plain user', async () => {
    const anonymous = await fetch(`${broker.httpUrl}/`);
    assert.equal(anonymous.status, 401);
    assert.match(anonymous.headers.get('www-authenticate'), /^Basic /);
    const user = await fetch(`${broker.httpUrl}/`, { headers: { authorization: basic(USER) } });
    assert.equal(user.status, 403);
    const admin = await fetch(`${broker.httpUrl}/dashboard.js`, { headers: { authorization: basic(ADMIN) } });
    assert.equal(admin.status, 200);
    assert.match(admin.headers.get('content-type'), /javascript/);
  });

  it('a write from another site\'s page is refused even with the administrator\'s credentials', async () => {
    const response = await fetch(`${broker.httpUrl}/api/v1/publish/queue/${queue}-csrf`, {
      method: 'POST',
      headers: { authorization: basic(ADMIN), origin: 'http://evil.example', 'content-type': 'text/plain' },
      body: 'forged',
    });
    assert.equal(response.status, 403);
    assert.equal((await response.json()).error, 'forbidden');
  });

  it('logs in and shows a queue created by a test publish, with its depth', async () => {
    for (let i = 0; i < 3; i++) await publish(`/queue/${queue}`, `order ${i}`);
    await page.goto(`${broker.httpUrl}/?interval=300#queues`, { timeout: 10000 });
    await page.locator(`tr[data-queue="${queue}"]`).waitFor();
    assert.equal(await readyCount(), 3);
    // The queue list and the overview are two requests; either may answer first.
    await waitInBrowser(() => document.getElementById('health').textContent === 'ready', null, 'the health pill to say ready');
  });

  it('the depth and the counts update without a reload', async () => {
    const before = Number(await page.evaluate(() => document.body.dataset.updated));
    for (let i = 3; i < 7; i++) await publish(`/queue/${queue}`, `order ${i}`);
    await waitInBrowser((q) => {
      const cell = document.querySelector(`tr[data-queue="${q}"] td.ready`);
      return cell && cell.textContent === '7';
    }, queue, 'the queue depth to reach 7');
    assert.ok(Number(await page.evaluate(() => document.body.dataset.updated)) > before);
    assert.equal(await page.textContent('#n-queues'), '1');
  });

  it('peeks at the queue from the UI without consuming anything', async () => {
    await page.locator(`tr[data-queue="${queue}"] button`, { hasText: 'Peek' }).click();
    await page.locator('#peek .message').first().waitFor();
    assert.equal(await page.locator('#peek .message').count(), 7);
    assert.match(await page.textContent('#peek'), /order 0/);
    assert.equal(await readyCount(), 7);
  });

  it('purges the queue from the UI and the depth goes to 0', async () => {
    await page.locator(`tr[data-queue="${queue}"] button`, { hasText: 'Purge' }).click();
    await page.locator('#confirm-ok').click();
    await waitInBrowser((q) => {
      const cell = document.querySelector(`tr[data-queue="${q}"] td.ready`);
      return cell && cell.textContent === '0';
    }, queue, 'the queue depth to go to 0');
    assert.match(await page.textContent('#banner'), /Purged 7 messages/);
    const api = await fetch(`${broker.httpUrl}/api/v1/queues/%2F/${queue}`, { headers: { authorization: basic(ADMIN) } });
    assert.equal((await api.json()).messages_ready, 0);
  });

  it('the overview shows connections, rates, memory and the disk, and lists connections', async () => {
    for (let i = 0; i < 3; i++) {
      const { client } = await connectClient(broker.wsUrl, { connectHeaders: { login: USER.username, passcode: USER.password } });
      clients.push(client);
    }
    await subscribe(clients[0], `/topic/prices-${uid()}`);
    await subscribe(clients[1], `/queue/${queue}`);
    for (let i = 0; i < 20; i++) await publish(`/queue/work-${i % 4}`, `job ${i}`);
    await page.goto(`${broker.httpUrl}/?interval=300#overview`);
    await waitInBrowser(() => document.getElementById('c-connections').textContent === '3', null, '3 connections on the overview');
    await waitInBrowser(() => Number(document.getElementById('c-publish').textContent) > 0, null, 'a publish rate above 0');
    assert.match(await page.textContent('#c-memory'), /MB/);
    assert.match(await page.textContent('#c-disk'), /B$/);
    assert.equal(await page.textContent('#c-queues'), '5');
    await page.click('a[data-tab="connections"]');
    await waitInBrowser(() => document.querySelectorAll('#connections tbody tr[data-id]').length === 3, null, '3 connection rows');
    assert.match(await page.textContent('#connections'), /bob/);
    await page.click('a[data-tab="topics"]');
    await waitInBrowser(() => /\/topic\/prices-/.test(document.getElementById('topics').textContent), null, 'the topic row');
    await page.click('a[data-tab="bridges"]');
    await waitInBrowser(() => /No webhooks/.test(document.getElementById('webhooks').textContent), null, 'the webhooks empty state');
    assert.match(await page.textContent('#bridges'), /No STOMP bridges/);
  });

  it('renders at 1280x800 and fits a phone width (screenshots)', async () => {
    // Steady traffic for the charts: a consumer on work-0 and a publisher over STOMP.
    await subscribe(clients[2], '/queue/work-0');
    let n = 0;
    const load = setInterval(() => {
      for (let i = 0; i < 5; i++) clients[1].publish({ destination: `/queue/work-${n++ % (n < 400 ? 1 : 4)}`, body: `job ${n}` });
    }, 40);
    try {
      await page.click('a[data-tab="overview"]');
      await waitInBrowser(() => window.stampedeDashboard.history.length >= 28, null, 'a few seconds of chart points');
    } finally {
      clearInterval(load);
    }
    assert.ok(Number((await page.textContent('#c-deliver')).replace(/[,k]/g, '')) > 0, 'deliveries are counted');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'stampede-dashboard-'));
    const shot = path.join(dir, 'dashboard-1280.png');
    await page.screenshot({ path: shot });
    assert.ok(fs.statSync(shot).size > 10000, 'screenshot is suspiciously small');
    if (process.env.STAMPEDE_DOCS_SCREENSHOTS) {
      fs.mkdirSync(path.join(REPO_ROOT, 'docs'), { recursive: true });
      await page.screenshot({ path: path.join(REPO_ROOT, 'docs', 'dashboard.png') });
    }
    await page.setViewportSize({ width: 390, height: 844 });
    await page.click('a[data-tab="queues"]');
    await page.locator(`tr[data-queue="${queue}"]`).waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `the page is ${overflow}px wider than a phone screen`);
    await page.screenshot({ path: path.join(dir, 'dashboard-phone.png'), fullPage: true });
    console.log(`# screenshots: ${dir}`);
    assert.deepEqual(pageErrors, []);
  });
});
