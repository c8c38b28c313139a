import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WebSocket, WebSocketServer } from 'ws';
import type { Route, RouteEvent, Worker } from '../../proto/index.ts';

// Runs bin/appproxy against a stand-in coordinator on 127.0.0.1, so each failure mode of the
// REST API and the event stream can be produced on demand.

const BIN = fileURLToPath(new URL('../../bin/appproxy', import.meta.url));
const TOKEN = 'cli-test-read-token-7f3a';
const WORKER_ID = 'a0000000-0000-4000-8000-000000000001';
const CLI_TIMEOUT_MS = 20_000;

interface RecordedRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  authorization: string | undefined;
}

interface Reply {
  status: number;
  body: unknown;
}

interface FakeOptions {
  token?: string;
  /** Responds to a REST request; undefined falls back to the default responses. */
  rest?: (request: RecordedRequest) => Reply | undefined;
  /** Drives one event stream connection; `index` counts connections from 0. */
  onStream?: (socket: WebSocket, query: URLSearchParams, index: number) => void;
  /** Rejects the upgrade of connection `index` with the response returned, if any. */
  rejectStream?: (index: number) => Reply | undefined;
  routes?: Route[];
}

interface FakeCoordinator {
  url: string;
  requests: RecordedRequest[];
  streamQueries: URLSearchParams[];
  close: () => Promise<void>;
}

function makeRoute(index: number, overrides: Partial<Route> = {}): Route {
  return {
    id: `6f1c2a4e-8d3b-4c5a-9e7f-0000000000${String(index).padStart(2, '0')}`,
    session_id: `s${index}`,
    service: 'jupyter',
    protocol: 'http',
    mode: 'interactive',
    backends: [{ host: '127.0.0.1', port: 8888, weight: 1 }],
    worker_id: WORKER_ID,
    port: 21000 + index,
    subdomain: null,
    url: `http://127.0.0.1:${21000 + index}`,
    open_to_public: false,
    allowed_client_ips: [],
    labels: {},
    status: 'active',
    revision: index,
    created_at: '2026-01-02T03:04:05.000Z',
    updated_at: '2026-01-02T03:04:05.000Z',
    ...overrides,
  };
}

function makeWorker(overrides: Partial<Worker> = {}): Worker {
  return {
    id: WORKER_ID,
    authority: 'proxy-a',
    frontend_mode: 'port',
    hostname: '127.0.0.1',
    protocols: ['http'],
    port_range: [21000, 21099],
    wildcard_domain: null,
    advertised_port: null,
    capacity: null,
    labels: {},
    status: 'alive',
    connected: true,
    generation: 1,
    registered_at: new Date().toISOString(),
    last_heartbeat_at: new Date().toISOString(),
    route_count: 1,
    target_revision: 7,
    applied_revision: 7,
    lag_revisions: 0,
    lag_ms: 0,
    last_ack_at: null,
    last_nack: null,
    instances: [],
    ...overrides,
  };
}

function makeEvent(revision: number): RouteEvent {
  return {
    revision,
    type: 'route.created',
    at: '2026-01-02T03:04:05.000Z',
    route: makeRoute(revision),
  };
}

function defaultReply(request: RecordedRequest, options: FakeOptions): Reply {
  if (request.path === '/health') {
    const health = {
      status: 'ok',
      db: 'up',
      epoch: 'e1',
      revision: 7,
      workers: { alive: 1, lost: 0 },
    };
    return { status: 200, body: health };
  }
  if (request.path === '/workers') return { status: 200, body: { workers: [makeWorker()] } };
  if (request.path === '/routes') return pageOfRoutes(request.query, options.routes ?? []);
  return { status: 404, body: { title: 'Not Found', status: 404, detail: request.path } };
}

/** Pages like the coordinator: `cursor` is the index of the first route of the page. */
function pageOfRoutes(query: URLSearchParams, routes: Route[]): Reply {
  const start = Number(query.get('cursor') ?? 0);
  const limit = Number(query.get('limit') ?? 100);
  const end = start + limit;
  const next_cursor = end < routes.length ? String(end) : null;
  return { status: 200, body: { routes: routes.slice(start, end), next_cursor } };
}

async function startFake(options: FakeOptions = {}): Promise<FakeCoordinator> {
  const requests: RecordedRequest[] = [];
  const streamQueries: URLSearchParams[] = [];
  const expected = `Bearer ${options.token ?? TOKEN}`;
  const server = createServer((request, response) => {
    const recorded = record(request);
    requests.push(recorded);
    const isPublic = recorded.path === '/health';
    const reply =
      !isPublic && recorded.authorization !== expected
        ? { status: 401, body: { title: 'Unauthorized', status: 401, detail: 'unknown token' } }
        : (options.rest?.(recorded) ?? defaultReply(recorded, options));
    const type = reply.status >= 400 ? 'application/problem+json' : 'application/json';
    response.writeHead(reply.status, { 'content-type': type });
    response.end(JSON.stringify(reply.body));
  });
  const webSockets = new WebSocketServer({ noServer: true });
  server.on('upgrade', (request, socket, head) => {
    const recorded = record(request);
    streamQueries.push(recorded.query);
    const index = streamQueries.length - 1;
    const rejection = options.rejectStream?.(index);
    if (rejection) {
      const body = JSON.stringify(rejection.body);
      socket.end(
        `HTTP/1.1 ${rejection.status} Rejected\r\ncontent-type: application/problem+json\r\n` +
          `content-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
      );
      return;
    }
    webSockets.handleUpgrade(request, socket, head, (ws) =>
      options.onStream?.(ws, recorded.query, index),
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    streamQueries,
    close: () => closeFake(server, webSockets),
  };
}

function record(request: IncomingMessage): RecordedRequest {
  const url = new URL(request.url ?? '/', 'http://127.0.0.1');
  return {
    method: request.method ?? 'GET',
    path: url.pathname,
    query: url.searchParams,
    authorization: request.headers.authorization,
  };
}

async function closeFake(server: Server, webSockets: WebSocketServer): Promise<void> {
  for (const socket of webSockets.clients) socket.terminate();
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

/** Builds the environment of the CLI, without the caller's APPPROXY_* settings or NO_COLOR. */
function cliEnv(url: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.startsWith('APPPROXY_') && key !== 'NO_COLOR') env[key] = value;
  }
  return { ...env, APPPROXY_COORDINATOR_URL: url, APPPROXY_READ_TOKEN: TOKEN, ...extra };
}

interface CliRun {
  child: ChildProcess;
  stdout: () => string;
  stderr: () => string;
  exited: Promise<number | null>;
  /** Waits until stdout has a line for which `predicate` holds. */
  waitForLine: (predicate: (line: string) => boolean, timeoutMs?: number) => Promise<string>;
}

function startCli(args: string[], env: NodeJS.ProcessEnv): CliRun {
  const child = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (chunk) => (stdout += chunk));
  child.stderr!.on('data', (chunk) => (stderr += chunk));
  // Every run ends by itself, even when the CLI hangs.
  const killer = setTimeout(() => child.kill('SIGKILL'), CLI_TIMEOUT_MS);
  const exited = new Promise<number | null>((resolve) => {
    child.once('exit', (code) => {
      clearTimeout(killer);
      resolve(code);
    });
  });
  const waitForLine = async (predicate: (line: string) => boolean, timeoutMs = 10_000) => {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const line = stdout.split('\n').find(predicate);
      if (line !== undefined) return line;
      if (child.exitCode !== null) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`No matching line on stdout. stdout:\n${stdout}\nstderr:\n${stderr}`);
  };
  return { child, stdout: () => stdout, stderr: () => stderr, exited, waitForLine };
}

async function runCli(args: string[], env: NodeJS.ProcessEnv) {
  const run = startCli(args, env);
  const code = await run.exited;
  return { code, stdout: run.stdout(), stderr: run.stderr() };
}

async function waitUntil(condition: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`Condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

function revisionsOf(stdout: string): number[] {
  return stdout
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => (JSON.parse(line) as RouteEvent).revision);
}

describe('appproxy tail', () => {
  test('reconnects and resumes after the last printed revision', async () => {
    const fake = await startFake({
      onStream: (socket, _query, index) => {
        const revisions = index === 0 ? [1, 2, 3] : [3, 4, 5];
        for (const revision of revisions) socket.send(JSON.stringify(makeEvent(revision)));
        // The first connection dies without a close frame, like a lost network.
        if (index === 0) setTimeout(() => socket.terminate(), 100);
      },
    });
    try {
      const run = startCli(['tail', '--since', '0', '--json'], cliEnv(fake.url));
      await run.waitForLine((line) => line.includes('"revision":5'));
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
      assert.deepEqual(revisionsOf(run.stdout()), [1, 2, 3, 4, 5]);
      assert.equal(fake.streamQueries[0].get('since'), '0');
      assert.equal(fake.streamQueries[1].get('since'), '3');
      assert.match(
        run.stderr(),
        /Reconnected to ws:\/\/127\.0\.0\.1:\d+\/events\/stream; following events after revision 3/,
      );
    } finally {
      await fake.close();
    }
  });

  test('starts from the current revision without --since', async () => {
    const fake = await startFake({
      onStream: (socket) => socket.send(JSON.stringify(makeEvent(8))),
    });
    try {
      const run = startCli(['tail', '--json'], cliEnv(fake.url));
      await run.waitForLine((line) => line.includes('"revision":8'));
      run.child.kill('SIGINT');
      assert.equal(await run.exited, 0);
      assert.equal(fake.streamQueries[0].get('since'), '7');
    } finally {
      await fake.close();
    }
  });

  test('passes filters, resolving a worker authority to its id', async () => {
    const fake = await startFake({
      onStream: (socket) => socket.send(JSON.stringify(makeEvent(8))),
    });
    try {
      const args = ['tail', '--session', 's8', '--worker', 'proxy-a', '--json'];
      const run = startCli(args, cliEnv(fake.url));
      await run.waitForLine((line) => line.includes('"revision":8'));
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
      assert.equal(fake.streamQueries[0].get('session_id'), 's8');
      assert.equal(fake.streamQueries[0].get('worker_id'), WORKER_ID);
    } finally {
      await fake.close();
    }
  });

  test('prints readable lines with worker authorities', async () => {
    const fake = await startFake({
      onStream: (socket) => socket.send(JSON.stringify(makeEvent(8))),
    });
    try {
      const run = startCli(['tail'], cliEnv(fake.url));
      const line = await run.waitForLine((text) => text.includes('r8'));
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
      assert.match(
        line,
        /r8 {2}route\.created +s8\/jupyter {2}worker=proxy-a {2}http:\/\/127\.0\.0\.1:21008/,
      );
      assert.doesNotMatch(run.stdout(), /\x1b\[/);
    } finally {
      await fake.close();
    }
  });

  test('exits non-zero when the change log no longer has since', async () => {
    const fake = await startFake({
      onStream: (socket) => socket.close(4410, 'since 0 is older than revision 100'),
    });
    try {
      const { code, stderr } = await runCli(['tail', '--since', '0'], cliEnv(fake.url));
      assert.equal(code, 1);
      assert.match(stderr, /Cannot resume after revision 0/);
      assert.match(stderr, /since 0 is older than revision 100/);
      assert.equal(fake.streamQueries.length, 1);
    } finally {
      await fake.close();
    }
  });

  test('rejected upgrade prints the problem and stops', async () => {
    const problem = {
      title: 'Forbidden',
      status: 403,
      detail: 'the event stream needs a read token',
    };
    const fake = await startFake({ rejectStream: () => ({ status: 403, body: problem }) });
    try {
      const { code, stderr } = await runCli(['tail', '--since', '0'], cliEnv(fake.url));
      assert.equal(code, 1);
      assert.match(stderr, /403 Forbidden: the event stream needs a read token/);
      assert.doesNotMatch(stderr, new RegExp(TOKEN));
      assert.equal(fake.streamQueries.length, 1);
    } finally {
      await fake.close();
    }
  });

  test('retries a stream rejected with 503', async () => {
    const problem = { title: 'Service Unavailable', status: 503, detail: 'database unreachable' };
    const fake = await startFake({
      rejectStream: (index) => (index === 0 ? { status: 503, body: problem } : undefined),
      onStream: (socket) => socket.send(JSON.stringify(makeEvent(1))),
    });
    try {
      const run = startCli(['tail', '--since', '0', '--json'], cliEnv(fake.url));
      await run.waitForLine((line) => line.includes('"revision":1'));
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
      assert.equal(fake.streamQueries.length, 2);
      assert.match(run.stderr(), /503 Service Unavailable: database unreachable; reconnecting/);
    } finally {
      await fake.close();
    }
  });

  test('SIGTERM while reconnecting exits 0', async () => {
    const fake = await startFake({ onStream: (socket) => socket.terminate() });
    try {
      const run = startCli(['tail', '--since', '0'], cliEnv(fake.url));
      await waitUntil(() => fake.streamQueries.length >= 2);
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
      assert.match(run.stderr(), /closed \(code 1006\); reconnecting in/);
    } finally {
      await fake.close();
    }
  });

  test('skips frames at or below the last revision', async () => {
    const fake = await startFake({
      onStream: (socket) => {
        for (const revision of [4, 5, 5, 3, 6]) socket.send(JSON.stringify(makeEvent(revision)));
      },
    });
    try {
      const run = startCli(['tail', '--since', '3', '--json'], cliEnv(fake.url));
      await run.waitForLine((line) => line.includes('"revision":6'));
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0);
      assert.deepEqual(revisionsOf(run.stdout()), [4, 5, 6]);
    } finally {
      await fake.close();
    }
  });
});

describe('appproxy routes', () => {
  const routes = [1, 2, 3, 4, 5].map((index) => makeRoute(index));

  test('follows next_cursor to the last page', async () => {
    const fake = await startFake({ routes });
    try {
      const args = ['routes', '--page-size', '2', '--json'];
      const { code, stdout } = await runCli(args, cliEnv(fake.url));
      assert.equal(code, 0);
      const listed = (JSON.parse(stdout) as { routes: Route[] }).routes.map((route) => route.id);
      assert.deepEqual(
        listed,
        routes.map((route) => route.id),
      );
      const pages = fake.requests.filter((request) => request.path === '/routes');
      assert.deepEqual(
        pages.map((page) => page.query.get('cursor')),
        [null, '2', '4'],
      );
      assert.ok(pages.every((page) => page.query.get('limit') === '2'));
    } finally {
      await fake.close();
    }
  });

  test('sends filters and prints a table', async () => {
    const fake = await startFake({ routes: routes.slice(0, 1) });
    try {
      const args = ['routes', '--session', 's1', '--service', 'jupyter'];
      const { code, stdout } = await runCli(args, cliEnv(fake.url));
      assert.equal(code, 0);
      const query = fake.requests.find((request) => request.path === '/routes')!.query;
      assert.equal(query.get('session_id'), 's1');
      assert.equal(query.get('service'), 'jupyter');
      const [header, row] = stdout.trimEnd().split('\n');
      assert.match(header, /^ID +SESSION +SERVICE +PROTOCOL +WORKER +URL +STATUS +REVISION$/);
      assert.match(row, /s1 +jupyter +http +proxy-a +http:\/\/127\.0\.0\.1:21001 +active +1$/);
    } finally {
      await fake.close();
    }
  });

  test('problem response prints title and detail', async () => {
    const problem = {
      type: 'about:blank',
      title: 'Bad Request',
      status: 400,
      detail: 'invalid query',
      request_id: 'req-1',
      issues: [{ path: 'session_id', message: 'Invalid length' }],
    };
    const fake = await startFake({ rest: () => ({ status: 400, body: problem }) });
    try {
      const { code, stderr } = await runCli(['routes'], cliEnv(fake.url));
      assert.equal(code, 1);
      assert.match(stderr, /GET \/routes failed with 400 Bad Request: invalid query/);
      assert.match(stderr, /session_id: Invalid length/);
      assert.match(stderr, /request id: req-1/);
    } finally {
      await fake.close();
    }
  });

  test('unknown token fails without printing it', async () => {
    const fake = await startFake({ token: 'another-token' });
    try {
      const { code, stderr } = await runCli(['routes'], cliEnv(fake.url));
      assert.equal(code, 1);
      assert.match(stderr, /401 Unauthorized: unknown token/);
      assert.doesNotMatch(stderr, new RegExp(TOKEN));
    } finally {
      await fake.close();
    }
  });
});

describe('appproxy connection and token', () => {
  let dataDir: string;

  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-cli-test-'));
  });

  after(async () => {
    await rm(dataDir, { recursive: true, force: true });
  });

  test('refused connection names the URL and the fix', async () => {
    const fake = await startFake();
    await fake.close();
    const { code, stderr } = await runCli(['workers'], cliEnv(fake.url));
    assert.equal(code, 1);
    assert.match(stderr, new RegExp(`${fake.url}: connection refused`));
    assert.match(stderr, /bin\/appproxy-coordinator/);
  });

  test('reads the read token from tokens.json', async () => {
    await writeFile(
      path.join(dataDir, 'tokens.json'),
      JSON.stringify({ manager: 'manager-file-token', worker: 'w', read: 'read-file-token' }),
    );
    const fake = await startFake({ token: 'read-file-token' });
    try {
      const env = cliEnv(fake.url, { APPPROXY_READ_TOKEN: undefined });
      const { code, stdout } = await runCli(['workers', '--data-dir', dataDir], env);
      assert.equal(code, 0);
      assert.match(stdout, /proxy-a/);
    } finally {
      await fake.close();
    }
  });

  test('missing token file names the file and the variable', async () => {
    const env = cliEnv('http://127.0.0.1:9', { APPPROXY_READ_TOKEN: undefined });
    const missing = path.join(dataDir, 'missing');
    const { code, stderr } = await runCli(['workers', '--data-dir', missing], env);
    assert.equal(code, 1);
    assert.match(stderr, /tokens\.json does not exist/);
    assert.match(stderr, /APPPROXY_READ_TOKEN/);
  });
});

describe('appproxy status', () => {
  test('shows the last rejected route of a worker', async () => {
    const worker = makeWorker({
      applied_revision: 6,
      target_revision: 7,
      lag_revisions: 1,
      lag_ms: 2500,
      last_nack: {
        revision: 7,
        reason: 'rejected',
        error: 'port 21001 is in use',
        at: new Date(Date.now() - 5 * 60_000).toISOString(),
      },
    });
    const fake = await startFake({
      rest: (request) =>
        request.path === '/workers' ? { status: 200, body: { workers: [worker] } } : undefined,
    });
    try {
      const { code, stdout } = await runCli(['status'], cliEnv(fake.url));
      assert.equal(code, 0);
      assert.match(stdout, /coordinator http:\/\/127\.0\.0\.1:\d+: ok, database up, revision 7/);
      assert.match(stdout, /1 rev, 2s/);
      assert.match(stdout, /r7 rejected 5m( \d+s)? ago: port 21001 is in use/);
    } finally {
      await fake.close();
    }
  });

  test('exits non-zero while the database is down', async () => {
    const fake = await startFake({
      rest: (request) =>
        request.path === '/health'
          ? { status: 503, body: { status: 'error', db: 'down' } }
          : undefined,
    });
    try {
      const { code, stdout, stderr } = await runCli(['status'], cliEnv(fake.url));
      assert.equal(code, 1);
      assert.match(stdout, /database down/);
      assert.match(stderr, /unhealthy/);
    } finally {
      await fake.close();
    }
  });
});
