import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import type { TestDatabase } from '../helpers/database.ts';
import {
  ScriptedWorker,
  type HeldRoute,
  type ScriptedWorkerOptions,
} from '../helpers/scripted-worker.ts';

// Shared pieces of the regression suites in this folder: REST calls against
// any coordinator URL, coordinator processes that tests kill and restart, and
// polling with a deadline.

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Heartbeat interval of these suites; deadlines below scale with it. */
export const HEARTBEAT_MS = 1000;

export interface ApiResponse {
  status: number;
  headers: Headers;
  body: any;
}

export type Api = (method: string, urlPath: string, body?: unknown) => Promise<ApiResponse>;

/** Returns a REST caller for `baseUrl` that sends `token` as the bearer token. */
export function apiClient(baseUrl: () => string, token: string): Api {
  return async (method, urlPath, body) => {
    const response = await fetch(`${baseUrl()}${urlPath}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(15_000),
    });
    const text = await response.text();
    const parsed = text ? JSON.parse(text) : null;
    return { status: response.status, headers: response.headers, body: parsed };
  };
}

/** Starts an in-process coordinator with the heartbeat interval of these suites. */
export function startCaseCoordinator(env: Record<string, string> = {}): Promise<TestCoordinator> {
  return startTestCoordinator({ APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS), ...env });
}

/** Returns backends as sorted `host:port` strings, for comparing backend lists. */
export function addresses(backends: Array<{ host: string; port: number }>): string[] {
  return backends.map((backend) => `${backend.host}:${backend.port}`).sort();
}

/** Body of `POST /routes` for `(session, service, host:port)`, with `extra` fields. */
export function routeBody(
  sessionId: string,
  service: string,
  backend: string,
  extra: Record<string, unknown> = {},
): Record<string, unknown> {
  const [host, port] = backend.split(':');
  return { session_id: sessionId, service, backends: [{ host, port: Number(port) }], ...extra };
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `probe` until it returns a value other than undefined; fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await Promise.resolve()
      .then(probe)
      .catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** Polls `predicate` until it holds; fails after `timeoutMs`. */
export async function waitUntil(
  what: string,
  timeoutMs: number,
  predicate: () => boolean,
): Promise<void> {
  await eventually(what, timeoutMs, () => (predicate() ? true : undefined));
}

/** Returns a TCP port that nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Creates a scripted worker for a coordinator started by startTestCoordinator. */
export function scriptedWorker(
  coordinator: Pick<TestCoordinator, 'url' | 'tokens'>,
  options: Partial<ScriptedWorkerOptions> = {},
): ScriptedWorker {
  return new ScriptedWorker({
    coordinatorUrl: coordinator.url,
    workerToken: coordinator.tokens.worker,
    ...options,
  });
}

/** Registers and connects a worker, and waits for its first snapshot. */
export async function connectedWorker(
  coordinator: Pick<TestCoordinator, 'url' | 'tokens'>,
  options: Partial<ScriptedWorkerOptions> = {},
): Promise<ScriptedWorker> {
  const worker = scriptedWorker(coordinator, options);
  await worker.register();
  await worker.connect();
  const hasSnapshot = () => worker.messages.some((m) => m.type === 'snapshot');
  // Generous: suites run two at a time on a shared machine, and this only sets up.
  await worker.waitFor(hasSnapshot, 15_000, 'snapshot');
  return worker;
}

/** Waits until the worker is in sync: every route active and applied ≥ target. */
export async function waitInSync(api: Api, workerId: string, timeoutMs = 5000): Promise<void> {
  await eventually(`worker ${workerId} in sync`, timeoutMs, async () => {
    const worker = await api('GET', `/workers/${workerId}`);
    if (worker.body.applied_revision < worker.body.target_revision) return undefined;
    const routes = await api('GET', `/routes?worker_id=${workerId}&limit=1000`);
    return routes.body.routes.every((r: any) => r.status === 'active') ? true : undefined;
  });
}

/** Asserts that the worker's table has the same ids, backends and revisions as REST. */
export async function assertTableMatchesRest(api: Api, worker: ScriptedWorker): Promise<void> {
  const rest = await listAll(api, `/routes?worker_id=${worker.id}`);
  const summarize = (route: HeldRoute) => [route.id, route.revision, addresses(route.backends)];
  const fromRest = rest.map(summarize).sort();
  const held = [...worker.table.values()].map(summarize).sort();
  assert.deepEqual(held, fromRest);
}

/** Reads every page of a route listing. */
export async function listAll(api: Api, urlPath: string): Promise<any[]> {
  const routes: any[] = [];
  let cursor: string | null = null;
  do {
    const separator = urlPath.includes('?') ? '&' : '?';
    const page = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const response = await api('GET', `${urlPath}${separator}limit=1000${page}`);
    assert.equal(response.status, 200);
    routes.push(...response.body.routes);
    cursor = response.body.next_cursor;
  } while (cursor);
  return routes;
}

/** Reads every event after `since` from `GET /events`. */
export async function eventsSince(api: Api, since: number): Promise<any[]> {
  const events: any[] = [];
  for (let cursor = since; ; ) {
    const response = await api('GET', `/events?since=${cursor}&limit=1000`);
    assert.equal(response.status, 200, JSON.stringify(response.body));
    events.push(...response.body.events);
    if (response.body.events.length < 1000) return events;
    cursor = response.body.events.at(-1).revision;
  }
}

/** Returns the current revision from `GET /health`. */
export async function currentRevision(api: Api): Promise<number> {
  const health = await api('GET', '/health');
  assert.equal(health.status, 200);
  return health.body.revision;
}

/** Diffs and snapshots a worker received after message index `from`. */
export function tableMessages(worker: ScriptedWorker, from = 0): Array<Record<string, any>> {
  return worker.messages.slice(from).filter((m) => m.type === 'diff' || m.type === 'snapshot');
}

export interface CoordinatorProcessOptions {
  databaseUrl: string;
  dataDir: string;
  port: number;
  env?: Record<string, string>;
}

/**
 * A coordinator run as `bin/appproxy-coordinator`, so a test can SIGKILL or
 * SIGTERM it and start it again on the same port, database and data directory.
 * Keeps its JSON log lines for assertions.
 */
export class CoordinatorProcess {
  readonly options: CoordinatorProcessOptions;
  readonly logLines: Array<Record<string, any>> = [];
  child: ChildProcess | null = null;
  tokens: { manager: string; worker: string; read: string } = { manager: '', worker: '', read: '' };
  #exited: Promise<void> = Promise.resolve();

  constructor(options: CoordinatorProcessOptions) {
    this.options = options;
  }

  /** Returns a process, not started yet, for a test database on a free port. */
  static async on(db: TestDatabase, env: Record<string, string> = {}): Promise<CoordinatorProcess> {
    const port = await freePort();
    const databaseUrl = db.url as string;
    return new CoordinatorProcess({ databaseUrl, dataDir: db.dataDir, port, env });
  }

  get url(): string {
    return `http://127.0.0.1:${this.options.port}`;
  }

  /** Starts the process and waits until `GET /health` returns 200. */
  async start(): Promise<void> {
    const child = spawn(
      path.join(ROOT, 'bin', 'appproxy-coordinator'),
      ['--port', String(this.options.port), '--data-dir', this.options.dataDir],
      {
        env: {
          ...process.env,
          DATABASE_URL: this.options.databaseUrl,
          APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
          APPPROXY_LOG_LEVEL: 'info',
          ...this.options.env,
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    this.child = child;
    this.#exited = new Promise((resolve) => child.once('exit', () => resolve()));
    this.#collectLog(child);
    child.stderr?.resume();
    await eventually('coordinator health', 30_000, async () => {
      if (child.exitCode !== null) return 'exited';
      const response = await fetch(`${this.url}/health`);
      return response.status === 200 ? 'up' : undefined;
    }).then((state) => {
      if (state !== 'exited') return;
      assert.fail(`coordinator exited with ${child.exitCode}: ${this.lastError()}`);
    });
    const file = path.join(this.options.dataDir, 'tokens.json');
    this.tokens = JSON.parse(await readFile(file, 'utf8'));
  }

  /** Sends `signal` and waits for the process to exit. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill(signal);
    await this.#exited;
  }

  /** Returns the message of the last error-level log line, if any. */
  lastError(): string {
    const entry = [...this.logLines].reverse().find((line) => line.level >= 50);
    return entry ? `${entry.msg} ${entry.err?.message ?? ''}` : 'no error logged';
  }

  #collectLog(child: ChildProcess): void {
    let rest = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      const lines = (rest + chunk.toString('utf8')).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        try {
          this.logLines.push(JSON.parse(line));
        } catch {
          // Not a JSON log line; nothing here depends on it.
        }
      }
    });
  }
}
