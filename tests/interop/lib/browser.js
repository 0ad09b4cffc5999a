'use strict';
// Headless Chromium for the browser suites: Debian's /usr/bin/chromium driven by
// playwright-core, the pages of tests/interop/browser served from a static server on
// loopback, and a page whose errors are collected so a test can require none.

const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { withTimeout } = require('./stomp-client');

const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Without the background-networking flags Chromium's own connections are refused by the
// machine's closed network, many at a time.
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];
const BROWSER_DIR = path.join(__dirname, '..', 'browser');
const STOMPJS_UMD = path.join(__dirname, '..', 'node_modules', '@stomp', 'stompjs', 'bundles', 'stomp.umd.min.js');

/** Serves the named files of tests/interop/browser, and the stompjs UMD bundle, on loopback. */
function startStaticServer(files) {
  const routes = { '/stomp.umd.min.js': [STOMPJS_UMD, 'text/javascript'] };
  for (const name of files) {
    routes[`/${name}`] = [path.join(BROWSER_DIR, name), name.endsWith('.html') ? 'text/html' : 'text/javascript'];
  }
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://x').pathname;
    if (pathname === '/favicon.ico') { res.writeHead(204); res.end(); return; }
    const entry = routes[pathname === '/' ? `/${files[0]}` : pathname];
    if (!entry) { res.writeHead(404); res.end('not found'); return; }
    res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' });
    res.end(fs.readFileSync(entry[0]));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

/**
 * Chromium with a fresh profile and one page; `errors` collects page errors and console errors.
 * close() ends both and removes the profile. `options` are more playwright context options
 * (httpCredentials, viewport, ...).
 */
async function openBrowser(options = {}) {
  const profileDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stampede-chromium-'));
  const context = await withTimeout(chromium.launchPersistentContext(profileDir, {
    executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: 30000, ...options,
  }), 40000, 'launching chromium');
  const page = await context.newPage();
  page.setDefaultTimeout(10000);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  const waitFor = (pred, arg, what) =>
    page.waitForFunction(pred, arg, { timeout: 10000 }).catch((e) => {
      throw new Error(`browser: timed out waiting for ${what}: ${e.message.split('\n')[0]}; page errors: ${errors}`);
    });
  const close = async () => {
    await withTimeout(context.close(), 10000, 'closing chromium').catch(() => {});
    fs.rmSync(profileDir, { recursive: true, force: true });
  };
  const newPage = async () => {
    const another = await context.newPage();
    another.setDefaultTimeout(10000);
    another.on('pageerror', (e) => errors.push(String(e)));
    another.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
    return another;
  };
  return { page, errors, waitFor, close, newPage, context };
}

module.exports = { startStaticServer, openBrowser };
