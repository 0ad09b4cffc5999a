'use strict';
// Shared launcher for the Node and browser interop suites: starts the real
// Stampede release binary on free loopback ports with a fresh data directory,
// waits (bounded) until its listeners accept, and kills it afterwards.
//
//   STAMPEDE_BIN=/path/to/stampede         override the binary
//   STAMPEDE_EXTERNAL_STOMP=host:port      use an already running broker instead
//   STAMPEDE_EXTERNAL_WS=ws://host:port/ws (both external variables together)

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const REPO_ROOT = path.resolve(__dirname, '..', '..', '..');
const DEFAULT_BIN = path.join(REPO_ROOT, 'target', 'release', 'stampede');
const START_TIMEOUT_MS = 15000;

function brokerBinary() {
  return process.env.STAMPEDE_BIN || DEFAULT_BIN;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function portAccepts(port, host = '127.0.0.1') {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host });
    const done = (ok) => { sock.destroy(); resolve(ok); };
    sock.setTimeout(500, () => done(false));
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

class Broker {
  /**
   * options.http: also open the management listener (on a free port, this.httpUrl);
   * options.config: TOML text written to a config file passed with --config;
   * options.args: more flags.
   */
  constructor(options = {}) {
    this.options = options;
    this.stompPort = 0;
    this.wsPort = 0;
    this.httpPort = 0;
    this.wsPath = '/ws';
    this.proc = null;
    this.dataDir = null;
    this.logPath = null;
    this.exitCode = null;
  }

  get wsUrl() {
    return `ws://127.0.0.1:${this.wsPort}${this.wsPath}`;
  }

  get httpUrl() {
    return `http://127.0.0.1:${this.httpPort}`;
  }

  /** The base URL of the WebSocket port's plain HTTP side (the demo, the fallback shim). */
  get wsHttpUrl() {
    return `http://127.0.0.1:${this.wsPort}`;
  }

  logTail(lines = 40) {
    try {
      const text = fs.readFileSync(this.logPath, 'utf8');
      return text.split('\n').slice(-lines).join('\n') || '(broker log is empty)';
    } catch {
      return '(no broker log)';
    }
  }

  async start() {
    if (process.env.STAMPEDE_EXTERNAL_STOMP) {
      this.stompPort = Number(process.env.STAMPEDE_EXTERNAL_STOMP.split(':').pop());
      const u = new URL(process.env.STAMPEDE_EXTERNAL_WS || 'ws://127.0.0.1:15674/ws');
      this.wsPort = Number(u.port);
      this.wsPath = u.pathname;
      return this;
    }
    const bin = brokerBinary();
    try {
      fs.accessSync(bin, fs.constants.X_OK);
    } catch {
      throw new Error(`broker binary not found at ${bin}; build it with ` +
        '`cargo build --release -p stampede-broker` or set STAMPEDE_BIN');
    }
    this.dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'stampede-interop-js-'));
    this.logPath = path.join(this.dataDir, 'broker.log');
    let lastError = '';
    for (let attempt = 0; attempt < 3; attempt++) {
      this.stompPort = await freePort();
      do { this.wsPort = await freePort(); } while (this.wsPort === this.stompPort);
      if (this.options.http) {
        do { this.httpPort = await freePort(); } while (this.httpPort === this.stompPort || this.httpPort === this.wsPort);
      }
      const data = path.join(this.dataDir, `data-${attempt}`);
      fs.mkdirSync(data);
      const args = [
        '--stomp-addr', `127.0.0.1:${this.stompPort}`,
        '--ws-addr', `127.0.0.1:${this.wsPort}`,
        '--http-addr', this.options.http ? `127.0.0.1:${this.httpPort}` : 'none',
        '--data-dir', data,
        '--log-level', 'warn',
      ];
      if (this.options.config) {
        const file = path.join(this.dataDir, 'stampede.toml');
        fs.writeFileSync(file, this.options.config);
        args.push('--config', file);
      }
      args.push(...(this.options.args || []));
      fs.appendFileSync(this.logPath, `$ ${bin} ${args.join(' ')}\n`);
      const logFd = fs.openSync(this.logPath, 'a');
      this.exitCode = null;
      this.proc = spawn(bin, args, { stdio: ['ignore', logFd, logFd] });
      fs.closeSync(logFd);
      const proc = this.proc;
      proc.on('exit', (code, signal) => { this.exitCode = code ?? signal; });
      const deadline = Date.now() + START_TIMEOUT_MS;
      while (Date.now() < deadline && this.exitCode === null) {
        if (await portAccepts(this.stompPort) && await portAccepts(this.wsPort)
          && (!this.options.http || await portAccepts(this.httpPort))) return this;
        await sleep(50);
      }
      if (this.exitCode === null) {
        lastError = `broker did not accept on ports ${this.stompPort}/${this.wsPort} within ${START_TIMEOUT_MS} ms`;
        await this.kill();
        break; // a hung start is not a port race: do not retry
      }
      lastError = `broker exited early (${this.exitCode})`;
    }
    throw new Error(`${lastError}\n--- broker log ---\n${this.logTail()}`);
  }

  alive() {
    if (process.env.STAMPEDE_EXTERNAL_STOMP) return true;
    return this.proc !== null && this.exitCode === null;
  }

  async kill() {
    const proc = this.proc;
    if (!proc || this.exitCode !== null) return;
    let hard, giveUp;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill('SIGTERM');
    hard = setTimeout(() => proc.kill('SIGKILL'), 5000);
    await Promise.race([exited, new Promise((r) => { giveUp = setTimeout(r, 10000); })]);
    clearTimeout(hard);
    clearTimeout(giveUp);
  }

  async stop() {
    await this.kill();
    if (this.dataDir && !process.env.STAMPEDE_KEEP_DATA) {
      fs.rmSync(this.dataDir, { recursive: true, force: true });
    }
  }
}

/** A broker hash of `password` for a `[users.<name>]` table (`stampede passwd`). */
function passwordHash(password) {
  const { execFileSync } = require('node:child_process');
  return execFileSync(brokerBinary(), ['passwd', '--password', password], { encoding: 'utf8' }).trim();
}

async function startBroker(options = {}) {
  const b = new Broker(options);
  await b.start();
  return b;
}

module.exports = { Broker, startBroker, passwordHash, freePort, portAccepts, sleep, REPO_ROOT };
