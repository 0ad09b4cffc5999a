'use strict';
// Spawns tests/interop/browser/backend.py (a real stomp.py client over TCP) from
// the tests/.venv interpreter and talks to it with JSON lines.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { REPO_ROOT } = require('./broker');
const { waitUntil, withTimeout, WAIT_MS } = require('./stomp-client');

function pythonBin() {
  if (process.env.STAMPEDE_PYTHON) return process.env.STAMPEDE_PYTHON;
  const venv = path.join(REPO_ROOT, 'tests', '.venv', 'bin', 'python');
  return fs.existsSync(venv) ? venv : 'python3';
}

class Backend {
  constructor(broker) {
    this.events = [];
    this.stderr = '';
    this.req = 0;
    this.exited = false;
    this.proc = spawn(pythonBin(), [path.join(__dirname, '..', 'browser', 'backend.py'), '127.0.0.1', String(broker.stompPort)],
      { stdio: ['pipe', 'pipe', 'pipe'] });
    this.proc.on('exit', () => { this.exited = true; });
    this.proc.stderr.on('data', (d) => { this.stderr += d; });
    readline.createInterface({ input: this.proc.stdout }).on('line', (line) => {
      try { this.events.push(JSON.parse(line)); } catch { this.events.push({ event: 'garbage', line }); }
    });
  }

  describe() {
    return `backend events: ${JSON.stringify(this.events)}; stderr: ${this.stderr.slice(-2000)}`;
  }

  async ready() {
    const ev = await waitUntil(
      () => this.events.find((e) => ['connected', 'fatal', 'error', 'disconnected'].includes(e.event)) || (this.exited && { event: 'exited' }),
      'stomp.py backend to connect').catch((e) => { throw new Error(`${e.message}; ${this.describe()}`); });
    if (ev.event !== 'connected') throw new Error(`stomp.py backend failed to connect; ${this.describe()}`);
    return this;
  }

  // Send an op and wait for the broker's RECEIPT (reported as "done").
  async request(cmd) {
    const req = ++this.req;
    this.proc.stdin.write(`${JSON.stringify({ ...cmd, req })}\n`);
    const ev = await waitUntil(() => this.events.find((e) => e.req === req), `backend ${cmd.op} (req ${req})`)
      .catch((e) => { throw new Error(`${e.message}; ${this.describe()}`); });
    if (ev.event !== 'done') throw new Error(`backend ${cmd.op} failed: ${ev.message}; ${this.describe()}`);
  }

  async waitMessage(pred, ms = WAIT_MS) {
    return waitUntil(() => this.events.find((e) => e.event === 'message' && pred(e)), 'message at the stomp.py backend', ms)
      .catch((e) => { throw new Error(`${e.message}; ${this.describe()}`); });
  }

  async stop() {
    if (this.exited) return;
    try {
      this.proc.stdin.write('{"op": "quit"}\n');
      this.proc.stdin.end();
      await withTimeout(new Promise((r) => this.proc.once('exit', r)), 5000, 'backend exit');
    } catch {
      this.proc.kill('SIGKILL');
    }
  }
}

async function startBackend(broker) {
  return new Backend(broker).ready();
}

module.exports = { Backend, startBackend };
