import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { Writable } from 'node:stream';
import { pino } from 'pino';
import { tableDigest } from '../../proto/index.ts';
import { parseConfig } from '../../src/coordinator/config.ts';
import { startCoordinator, type Coordinator } from '../../src/coordinator/coordinator.ts';
import type { ApiResponse } from '../helpers/coordinator.ts';
import type { TestDatabase } from '../helpers/database.ts';
import { ScriptedWorker, type ScriptedWorkerOptions } from '../helpers/scripted-worker.ts';

// Pieces shared by the sync suites: coordinators on a database the suite
// owns (several may share it), captured log lines, and reads of the whole
// route table and event log over REST.

export type Api = (method: string, urlPath: string, body?: unknown) => Promise<ApiResponse>;

export interface SyncCoordinator extends Coordinator {
  api: Api;
  tokens: { manager: string; worker: string; read: string };
  /** Log lines written so far, parsed. */
  logs: Array<Record<string, any>>;
  newWorker(options?: Partial<ScriptedWorkerOptions>): ScriptedWorker;
}

/**
 * Starts a coordinator in this process on `db`, capturing its log at
 * `logLevel`. Its heartbeat interval is a minute unless `env` sets one, so no
 * worker that a test closed is declared lost during the suite and its routes
 * never fail over onto the workers of later tests.
 */
export async function startSyncCoordinator(
  db: TestDatabase,
  env: Record<string, string> = {},
  logLevel = 'info',
): Promise<SyncCoordinator> {
  const config = parseConfig(['--port', '0', '--data-dir', db.dataDir, '--log-level', logLevel], {
    APPPROXY_HEARTBEAT_INTERVAL_MS: '60000',
    ...env,
    ...(db.url ? { DATABASE_URL: db.url } : {}),
  });
  const logs: Array<Record<string, any>> = [];
  const sink = new Writable({
    write(chunk, _encoding, done) {
      for (const line of String(chunk).split('\n')) if (line) logs.push(JSON.parse(line));
      done();
    },
  });
  const coordinator = await startCoordinator(config, pino({ level: logLevel }, sink));
  const tokens = JSON.parse(await readFile(path.join(db.dataDir, 'tokens.json'), 'utf8'));
  const api = apiFor(coordinator.url, tokens.manager);
  const newWorker = (options: Partial<ScriptedWorkerOptions> = {}) =>
    new ScriptedWorker({ coordinatorUrl: coordinator.url, workerToken: tokens.worker, ...options });
  return { ...coordinator, api, tokens, logs, newWorker };
}

/** Returns a REST caller for `baseUrl` with `token` as the bearer token. */
export function apiFor(baseUrl: string, token: string): Api {
  return async (method, urlPath, body) => {
    const response = await fetch(`${baseUrl}${urlPath}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(30_000),
    });
    const text = await response.text();
    const json = text ? JSON.parse(text) : null;
    return { status: response.status, headers: response.headers, body: json };
  };
}

/** Reads every route of a worker over REST, page by page. */
export async function restRoutes(api: Api, workerId: string): Promise<any[]> {
  const routes: any[] = [];
  let cursor: string | null = null;
  do {
    const page = cursor ? `&cursor=${encodeURIComponent(cursor)}` : '';
    const response = await api('GET', `/routes?worker_id=${workerId}&limit=1000${page}`);
    assert.equal(response.status, 200);
    routes.push(...response.body.routes);
    cursor = response.body.next_cursor;
  } while (cursor);
  return routes;
}

/** Asserts that a worker's table contains exactly the routes REST lists, at the same revisions. */
export async function assertTableMatchesRest(api: Api, worker: ScriptedWorker): Promise<void> {
  const rest = await restRoutes(api, worker.id);
  const expected = rest.map((route) => `${route.id}@${route.revision}`).sort();
  const held = [...worker.table.values()].map((route) => `${route.id}@${route.revision}`).sort();
  assert.deepEqual(held, expected);
  assert.equal(worker.digest, tableDigest(rest));
}

/** Reads every event after `since` from `GET /events`. */
export async function readEvents(api: Api, since = 0): Promise<any[]> {
  const events: any[] = [];
  for (let cursor = since; ; ) {
    const response = await api('GET', `/events?since=${cursor}&limit=1000`);
    assert.equal(response.status, 200);
    events.push(...response.body.events);
    if (response.body.events.length < 1000) return events;
    cursor = response.body.events.at(-1).revision;
  }
}

/** Body of `POST /routes` for a route pinned to a worker. */
export function routeBody(workerId: string, sessionId: string, service = 'jupyter', port = 8888) {
  return {
    session_id: sessionId,
    service,
    worker_id: workerId,
    backends: [
      { host: '192.0.2.10', port },
      { host: '192.0.2.11', port },
    ],
    labels: { team: 'research', env: 'test', owner: 'alice' },
  };
}

/** Registers a worker, opens its session and waits for the first snapshot. */
export async function connectWorker(
  coordinator: SyncCoordinator,
  options: Partial<ScriptedWorkerOptions> = {},
): Promise<ScriptedWorker> {
  const worker = coordinator.newWorker(options);
  await worker.register();
  await worker.connect();
  const hasSnapshot = () => worker.messages.some((m) => m.type === 'snapshot' && !m.more);
  await worker.waitFor(hasSnapshot, 10_000, 'snapshot');
  return worker;
}

/** Polls `probe` until it returns something other than undefined; fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined> | T | undefined,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}
