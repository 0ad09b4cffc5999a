'use strict';
// The README's browser quick start, run as written (only the URL changed) with stompjs in Node,
// against the real broker and a worker that answers /queue/jobs.

const { describe, it, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const WebSocket = require('ws');
const StompJs = require('@stomp/stompjs');
const { startBroker, sleep } = require('../lib/broker');
const { connectClient, disconnect } = require('../lib/stomp-client');

function snippet(marker, language) {
  const readme = fs.readFileSync(path.join(__dirname, '..', '..', '..', 'README.md'), 'utf8');
  const found = readme.match(new RegExp(`<!-- ${marker} -->\\n\`\`\`${language}\\n([\\s\\S]*?)\`\`\``));
  assert.ok(found, `the README has no ${marker} snippet`);
  return found[1];
}

describe('README quick start', () => {
  let broker;
  before(async () => { broker = await startBroker(); });
  after(async () => { if (broker) await broker.stop(); });

  it('the browser snippet chats and gets an answer to its job', async () => {
    const { client: worker } = await connectClient(broker.wsUrl);
    worker.subscribe('/queue/jobs', (m) => {
      worker.publish({ destination: m.headers['reply-to'], body: `done: ${m.body}` });
    });
    await sleep(200);
    const logged = [];
    const consoleLike = { log: (...parts) => logged.push(parts.join(' ')) };
    // The browser has WebSocket built in; Node gets it from `ws`.
    const Page = class extends StompJs.Client {
      constructor(config) {
        super({ ...config, webSocketFactory: () => new WebSocket(config.brokerURL, ['v12.stomp']) });
      }
    };
    const code = snippet('quickstart-browser', 'js').replace('ws://127.0.0.1:15674/ws', broker.wsUrl);
    const run = new Function('StompJs', 'console', `${code}\nreturn client;`);
    const client = run({ Client: Page }, consoleLike);
    const deadline = Date.now() + 10000;
    while (!logged.some((l) => l.startsWith('answer:')) && Date.now() < deadline) await sleep(50);
    await client.deactivate();
    await disconnect(worker);
    assert.ok(logged.includes('chat: hello from the browser'), JSON.stringify(logged));
    assert.ok(logged.includes('answer: done: resize photo.jpg'), JSON.stringify(logged));
  });
});
