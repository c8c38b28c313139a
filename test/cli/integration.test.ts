import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import WebSocket from 'ws';
import {
  type CoordinatorMessage,
  PROTOCOL_VERSION,
  type RegisterWorkerResponse,
  type Route,
  type RouteEvent,
  tableDigest,
} from '../../proto/index.ts';

// Runs bin/appproxy against a real coordinator process on its embedded database. A small
// worker written here registers and acknowledges routes, and rejects those of the service
// "broken", so that routes become active and a nack shows up in `appproxy status`.

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const HOST = '127.0.0.1';
const START_TIMEOUT_MS = 60_000;
const CLI_TIMEOUT_MS = 20_000;
const AUTHORITY = 'cli-it';
const REJECTED_SERVICE = 'broken';

interface Tokens {
  manager: string;
  worker: string;
  read: string;
}

interface Coordinator {
  url: string;
  child: ChildProcess;
  output: string[];
}

function cleanEnv(extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (key !== 'DATABASE_URL' && key !== 'NO_COLOR' && !key.startsWith('APPPROXY_')) {
      env[key] = value;
    }
  }
  return { ...env, ...extra };
}

async function findFreePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value; fails after `timeoutMs` naming `what`. */
async function waitFor<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>) {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    await sleep(100);
  }
  throw new Error(`Timed out waiting for ${what}`, { cause: lastError });
}

async function startCoordinator(port: number, dataDir: string): Promise<Coordinator> {
  const args = ['--host', HOST, '--port', String(port), '--data-dir', dataDir];
  const child = spawn(path.join(ROOT, 'bin', 'appproxy-coordinator'), args, {
    env: cleanEnv({ APPPROXY_HEARTBEAT_INTERVAL_MS: '1000' }),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output: string[] = [];
  child.stdout!.on('data', (chunk) => output.push(String(chunk)));
  child.stderr!.on('data', (chunk) => output.push(String(chunk)));
  const url = `http://${HOST}:${port}`;
  await waitFor(`${url}/health`, START_TIMEOUT_MS, async () => {
    if (child.exitCode !== null) throw new Error(`coordinator exited:\n${output.join('')}`);
    const response = await fetch(`${url}/health`, { signal: AbortSignal.timeout(1_000) });
    return response.status === 200 ? true : undefined;
  }).catch((error: Error) => {
    child.kill('SIGKILL');
    throw new Error(`${error.message}; coordinator output:\n${output.join('')}`, { cause: error });
  });
  return { url, child, output };
}

async function stopCoordinator(coordinator: Coordinator): Promise<void> {
  if (coordinator.child.exitCode !== null) return;
  const exited = new Promise((resolve) => coordinator.child.once('exit', resolve));
  coordinator.child.kill('SIGTERM');
  const killer = setTimeout(() => coordinator.child.kill('SIGKILL'), 10_000);
  await exited;
  clearTimeout(killer);
}

async function call<T>(url: string, token: string, method: string, body?: unknown): Promise<T> {
  const response = await fetch(url, {
    method,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${url} answered ${response.status}: ${text}`);
  return (text === '' ? undefined : JSON.parse(text)) as T;
}

/**
 * Minimal worker: registers, sends hello, keeps its table from snapshots and diffs, acks each
 * revision and rejects routes of the service "broken" with a nack.
 */
class TestWorker {
  readonly table = new Map<string, Route>();
  #socket?: WebSocket;
  #heartbeat?: NodeJS.Timeout;
  #pendingSnapshot: Route[] = [];
  #appliedRevision = 0;

  async start(coordinatorUrl: string, workerToken: string): Promise<RegisterWorkerResponse> {
    const registration = await call<RegisterWorkerResponse>(
      `${coordinatorUrl}/workers/register`,
      workerToken,
      'POST',
      { authority: AUTHORITY, frontend_mode: 'port', hostname: HOST, port_range: [30000, 30099] },
    );
    const streamUrl = `${coordinatorUrl.replace(/^http/, 'ws')}/workers/stream`;
    const socket = new WebSocket(streamUrl, {
      headers: { authorization: `Bearer ${registration.session_token}` },
    });
    this.#socket = socket;
    socket.on('message', (data) => this.#receive(JSON.parse(String(data)) as CoordinatorMessage));
    socket.on('error', () => undefined);
    await new Promise((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    });
    this.#send({ type: 'hello', protocol_version: PROTOCOL_VERSION });
    this.#heartbeat = setInterval(() => this.#sendHeartbeat(), registration.heartbeat_interval_ms);
    return registration;
  }

  stop(): void {
    clearInterval(this.#heartbeat);
    this.#socket?.terminate();
  }

  #receive(message: CoordinatorMessage): void {
    if (message.type === 'snapshot') {
      this.#pendingSnapshot.push(...message.routes);
      if (message.more) return;
      this.table.clear();
      this.#applyUpserts(this.#pendingSnapshot, message.revision);
      this.#pendingSnapshot = [];
    } else if (message.type === 'diff') {
      for (const id of message.removes) this.table.delete(id);
      this.#applyUpserts(message.upserts, message.revision);
    }
  }

  #applyUpserts(routes: Route[], revision: number): void {
    const rejected = routes.find((route) => route.service === REJECTED_SERVICE);
    for (const route of routes) {
      if (route.service !== REJECTED_SERVICE) this.table.set(route.id, route);
    }
    if (rejected) {
      const error = `test worker rejects service ${REJECTED_SERVICE}`;
      this.#send({ type: 'nack', revision, reason: 'rejected', error });
      return;
    }
    this.#appliedRevision = revision;
    this.#send({ type: 'ack', revision, digest: tableDigest(this.table.values()) });
  }

  #sendHeartbeat(): void {
    const sentAt = new Date().toISOString();
    this.#send({
      type: 'heartbeat',
      sent_at: sentAt,
      applied_revision: this.#appliedRevision,
      stats: {},
    });
  }

  #send(message: object): void {
    if (this.#socket?.readyState === WebSocket.OPEN) this.#socket.send(JSON.stringify(message));
  }
}

interface CliRun {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
}

function startCli(args: string[], coordinatorUrl: string, readToken: string): CliRun {
  const env = cleanEnv({
    APPPROXY_COORDINATOR_URL: coordinatorUrl,
    APPPROXY_READ_TOKEN: readToken,
  });
  const child = spawn(path.join(ROOT, 'bin', 'appproxy'), args, {
    env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk) => (stdout += chunk));
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  const killer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      clearTimeout(killer);
      resolve(code);
    });
  });
  return { child, stdout: () => stdout, stderr: () => stderr, exited };
}

async function runCli(args: string[], coordinatorUrl: string, readToken: string) {
  const run = startCli(args, coordinatorUrl, readToken);
  const code = await run.exited;
  return { code, stdout: run.stdout(), stderr: run.stderr() };
}

function parseEvents(stdout: string): RouteEvent[] {
  return stdout
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as RouteEvent);
}

describe('appproxy against a real coordinator', () => {
  let dataDir: string;
  let port: number;
  let coordinator: Coordinator;
  let tokens: Tokens;
  const worker = new TestWorker();
  const created: Route[] = [];

  async function createRoute(sessionId: string, service: string): Promise<Route> {
    const body = { session_id: sessionId, service, backends: [{ host: HOST, port: 8888 }] };
    return call<Route>(`${coordinator.url}/routes`, tokens.manager, 'POST', body);
  }

  async function currentRevision(): Promise<number> {
    return (await call<{ revision: number }>(`${coordinator.url}/health`, '', 'GET')).revision;
  }

  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-cli-it-'));
    port = await findFreePort();
    coordinator = await startCoordinator(port, dataDir);
    tokens = JSON.parse(await readFile(path.join(dataDir, 'tokens.json'), 'utf8')) as Tokens;
    await worker.start(coordinator.url, tokens.worker);
    created.push(await createRoute('it-1', 'jupyter'));
    created.push(await createRoute('it-2', 'jupyter'));
    created.push(await createRoute('it-2', 'tensorboard'));
  });

  after(async () => {
    worker.stop();
    if (coordinator) await stopCoordinator(coordinator);
    await rm(dataDir, { recursive: true, force: true });
  });

  test('routes lists every route through pages of one', async () => {
    const { code, stdout, stderr } = await runCli(
      ['routes', '--page-size', '1', '--json'],
      coordinator.url,
      tokens.read,
    );
    assert.equal(code, 0, stderr);
    const ids = (JSON.parse(stdout) as { routes: Route[] }).routes.map((route) => route.id);
    assert.deepEqual([...ids].sort(), created.map((route) => route.id).sort());
  });

  test('routes filters by session and names the worker', async () => {
    const { code, stdout, stderr } = await runCli(
      ['routes', '--session', 'it-2'],
      coordinator.url,
      tokens.read,
    );
    assert.equal(code, 0, stderr);
    const rows = stdout.trimEnd().split('\n').slice(1);
    assert.equal(rows.length, 2);
    assert.ok(rows.every((row) => row.includes(' it-2 ') && row.includes(` ${AUTHORITY} `)));
  });

  test('routes become active once the worker acks', async () => {
    const route = await waitFor('route it-1 to become active', 10_000, async () => {
      const current = await call<Route>(
        `${coordinator.url}/routes/${created[0].id}`,
        tokens.read,
        'GET',
      );
      return current.status === 'active' ? current : undefined;
    });
    const { stdout } = await runCli(['routes', '--session', 'it-1'], coordinator.url, tokens.read);
    assert.match(stdout, new RegExp(`${route.id} .* active +${route.revision}$`, 'm'));
  });

  test('tail --since 0 prints the stored history without gaps', async () => {
    const revision = await currentRevision();
    const run = startCli(['tail', '--since', '0', '--json'], coordinator.url, tokens.read);
    await waitFor(`tail to print revision ${revision}`, 10_000, async () =>
      parseEvents(run.stdout()).some((event) => event.revision === revision) ? true : undefined,
    );
    run.child.kill('SIGTERM');
    assert.equal(await run.exited, 0, run.stderr());
    const revisions = parseEvents(run.stdout()).map((event) => event.revision);
    assert.deepEqual(
      revisions,
      Array.from({ length: revisions.length }, (_, index) => index + 1),
    );
    const createdIds = parseEvents(run.stdout())
      .filter((event) => event.type === 'route.created')
      .map((event) => event.route?.id);
    assert.deepEqual(
      createdIds,
      created.map((route) => route.id),
    );
  });

  test('tail prints a live event readably', async () => {
    const run = startCli(['tail'], coordinator.url, tokens.read);
    // Without --since, only routes created after the stream is connected are printed.
    await waitFor('tail to connect', 10_000, async () =>
      run.stderr().includes('Connected to') ? true : undefined,
    );
    const route = await createRoute('it-live', 'jupyter');
    created.push(route);
    const line = await waitFor('the live route.created line', 10_000, async () =>
      run
        .stdout()
        .split('\n')
        .find((text) => text.includes('it-live/jupyter')),
    );
    run.child.kill('SIGINT');
    assert.equal(await run.exited, 0, run.stderr());
    assert.match(line, new RegExp(`r${route.revision} +route\\.created +it-live/jupyter`));
    assert.match(line, new RegExp(`worker=${AUTHORITY} +${route.url.replace(/\./g, '\\.')}`));
  });

  test('status shows the route the worker rejected', async () => {
    await createRoute('it-broken', REJECTED_SERVICE);
    const stdout = await waitFor('status to show the nack', 15_000, async () => {
      const result = await runCli(['status'], coordinator.url, tokens.read);
      return /rejected/.test(result.stdout) ? result.stdout : undefined;
    });
    assert.match(stdout, /ok, database up/);
    assert.match(
      stdout,
      new RegExp(`^${AUTHORITY} +alive .*test worker rejects service broken`, 'm'),
    );
  });

  test('workers --json lists the worker', async () => {
    const { code, stdout } = await runCli(['workers', '--json'], coordinator.url, tokens.read);
    assert.equal(code, 0);
    const authorities = (JSON.parse(stdout) as { workers: Array<{ authority: string }> }).workers;
    assert.deepEqual(
      authorities.map((item) => item.authority),
      [AUTHORITY],
    );
  });

  test('tail resumes across a coordinator restart', async () => {
    const run = startCli(['tail', '--since', '0', '--json'], coordinator.url, tokens.read);
    const before = await currentRevision();
    await waitFor('tail to catch up', 10_000, async () =>
      parseEvents(run.stdout()).some((event) => event.revision === before) ? true : undefined,
    );

    await stopCoordinator(coordinator);
    worker.stop();
    coordinator = await startCoordinator(port, dataDir);
    await call(`${coordinator.url}/routes/${created[0].id}`, tokens.manager, 'DELETE');

    await waitFor('tail to print the route.deleted event', 30_000, async () =>
      parseEvents(run.stdout()).some((event) => event.type === 'route.deleted') ? true : undefined,
    );
    run.child.kill('SIGTERM');
    assert.equal(await run.exited, 0, run.stderr());
    const revisions = parseEvents(run.stdout()).map((event) => event.revision);
    assert.deepEqual(
      revisions,
      Array.from({ length: revisions.length }, (_, index) => index + 1),
    );
    assert.match(run.stderr(), /reconnecting/);
  });
});
