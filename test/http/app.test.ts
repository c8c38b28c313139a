import assert from 'node:assert/strict';
import { createServer, request as httpRequest } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test, type TestContext } from 'node:test';
import { pino } from 'pino';
import type { RegisterWorkerResponse, Route, Worker } from '../../proto/index.ts';
import type { Principal } from '../../src/coordinator/tokens.ts';
import { ConflictError } from '../../src/errors.ts';
import { createHttpApp, type HttpDeps } from '../../src/http/app.ts';

const ROUTE_ID = '0b4c4f46-2f9e-4e43-9d83-0f3f1e6f2a11';
const WORKER_ID = '6f1d2c3b-5a4e-4f00-8c9d-1a2b3c4d5e6f';
const OTHER_WORKER_ID = '7a2e3d4c-6b5f-4a11-9dae-2b3c4d5e6f70';

const PRINCIPALS: Record<string, Principal> = {
  'manager-token': { kind: 'manager' },
  'read-token': { kind: 'read' },
  'worker-token': { kind: 'worker' },
  'session-token': { kind: 'session', workerId: WORKER_ID, instanceId: 'i1', generation: 1 },
};

const VALID_ROUTE_BODY = {
  session_id: 's1',
  service: 'jupyter',
  backends: [{ host: '10.0.0.5', port: 8888 }],
};

function sampleRoute(overrides: Partial<Route> = {}): Route {
  return {
    id: ROUTE_ID,
    session_id: 's1',
    service: 'jupyter',
    protocol: 'http',
    mode: 'interactive',
    backends: [{ host: '10.0.0.5', port: 8888, weight: 1 }],
    worker_id: WORKER_ID,
    port: 20001,
    subdomain: null,
    url: 'http://proxy.test:20001',
    open_to_public: false,
    allowed_client_ips: [],
    labels: {},
    status: 'pending',
    revision: 7,
    created_at: '2026-01-01T00:00:00.000Z',
    updated_at: '2026-01-01T00:00:00.000Z',
    ...overrides,
  };
}

/** Service stand-ins that record their calls; no database is involved. */
function fakeDeps(logLines: string[]) {
  const calls: Array<{ method: string; args: unknown[] }> = [];
  const record = (method: string, args: unknown[]) => calls.push({ method, args });
  const routes: HttpDeps['routes'] = {
    get: async (id) => (id === ROUTE_ID ? sampleRoute() : null),
    list: async (...args) => (record('list', args), [sampleRoute()]),
    sessionRoutes: async (...args) => (record('sessionRoutes', args), [sampleRoute()]),
    findByHost: async (...args) => (record('findByHost', args), null),
    findByPort: async (...args) => (record('findByPort', args), sampleRoute()),
    create: async (...args) => (record('create', args), { route: sampleRoute(), isCreated: true }),
    patch: async (...args) => (record('patch', args), sampleRoute()),
    remove: async (...args) => (record('remove', args), null),
    removeSession: async (...args) => (record('removeSession', args), 2),
    replaceSession: async (...args) => (
      record('replaceSession', args), { created: 0, updated: 0, deleted: 0, routes: [] }
    ),
  };
  const deps: HttpDeps = {
    routes,
    workers: {
      get: async () => null,
      list: async () => [],
      register: async (body) => ({
        response: { worker: { id: WORKER_ID }, generation: 1 } as RegisterWorkerResponse,
        isNew: body.authority === 'new-worker',
      }),
      deregister: async (...args) => void record('deregister', args),
      drain: async (...args) => (
        record('drain', args), { worker: { id: WORKER_ID } as Worker, moved: 0, remaining: 0 }
      ),
    },
    events: { list: async () => ({ events: [], revision: 0 }) },
    auth: { identify: async (token) => PRINCIPALS[token] ?? null },
    health: async () => ({ status: 'ok', db: 'up', epoch: 'e', revision: 0 }),
    log: pino({ level: 'debug' }, { write: (line: string) => void logLines.push(line) }),
  };
  return { deps, calls };
}

interface Harness {
  url: string;
  calls: Array<{ method: string; args: unknown[] }>;
  logLines: string[];
}

async function start(t: TestContext, change?: (deps: HttpDeps) => void): Promise<Harness> {
  const logLines: string[] = [];
  const { deps, calls } = fakeDeps(logLines);
  change?.(deps);
  const server = createServer(createHttpApp(deps).callback());
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => {
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}`, calls, logLines };
}

function send(
  harness: Harness,
  path: string,
  init: { method?: string; token?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<Response> {
  const headers: Record<string, string> = { ...init.headers };
  if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`;
  return fetch(`${harness.url}${path}`, { method: init.method ?? 'GET', headers, body: init.body });
}

function sendJson(harness: Harness, method: string, path: string, body: unknown) {
  return send(harness, path, {
    method,
    token: 'manager-token',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json' },
  });
}

async function readProblem(response: Response) {
  assert.equal(response.headers.get('content-type'), 'application/problem+json');
  return (await response.json()) as Record<string, unknown>;
}

test('POST /routes with text/plain body is 415', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes', {
    method: 'POST',
    token: 'manager-token',
    body: JSON.stringify(VALID_ROUTE_BODY),
    headers: { 'content-type': 'text/plain' },
  });
  assert.equal(response.status, 415);
  const problem = await readProblem(response);
  assert.equal(problem.type, 'https://appproxy.dev/problems/unsupported_media_type');
  assert.equal(harness.calls.length, 0);
});

test('POST /routes without content type is 415', async (t) => {
  const harness = await start(t);
  const body = new Blob([JSON.stringify(VALID_ROUTE_BODY)]);
  const response = await fetch(`${harness.url}/routes`, {
    method: 'POST',
    headers: { authorization: 'Bearer manager-token' },
    body,
  });
  assert.equal(response.status, 415);
});

test('PATCH /routes/:id with form body is 415', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/routes/${ROUTE_ID}`, {
    method: 'PATCH',
    token: 'manager-token',
    body: 'open_to_public=true',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
  });
  assert.equal(response.status, 415);
});

test('POST /routes over 1 MiB is 413', async (t) => {
  const harness = await start(t);
  const padding = 'x'.repeat(1024 * 1024);
  const response = await sendJson(harness, 'POST', '/routes', {
    ...VALID_ROUTE_BODY,
    labels: { padding },
  });
  assert.equal(response.status, 413);
  const problem = await readProblem(response);
  assert.equal(problem.status, 413);
  assert.equal(harness.calls.length, 0);
});

test('chunked body over 1 MiB is 413', async (t) => {
  const harness = await start(t);
  const { status, body } = await sendChunked(harness, '/routes', 2 * 1024 * 1024);
  assert.equal(status, 413);
  assert.equal(JSON.parse(body).status, 413);
});

/** Sends `totalBytes` of JSON-looking text with no Content-Length, in 64 KiB chunks. */
function sendChunked(harness: Harness, path: string, totalBytes: number) {
  return new Promise<{ status: number; body: string }>((resolve, reject) => {
    const request = httpRequest(`${harness.url}${path}`, {
      method: 'POST',
      headers: { authorization: 'Bearer manager-token', 'content-type': 'application/json' },
    });
    request.on('response', (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (body += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('error', reject);
    const chunk = Buffer.alloc(64 * 1024, ' ');
    request.write('{"labels":"');
    for (let sent = 0; sent < totalBytes; sent += chunk.length) request.write(chunk);
    request.end('"}');
  });
}

test('body exactly at 1 MiB is parsed', async (t) => {
  const harness = await start(t);
  const prefix = '{"session_id":"s1","pad":"';
  const suffix = '"}';
  const body = prefix + 'x'.repeat(1024 * 1024 - prefix.length - suffix.length) + suffix;
  assert.equal(Buffer.byteLength(body), 1024 * 1024);
  const response = await send(harness, '/routes', {
    method: 'POST',
    token: 'manager-token',
    body,
    headers: { 'content-type': 'application/json' },
  });
  // Parsed, then rejected by validation for its unknown and missing fields.
  assert.equal(response.status, 400);
});

test('malformed JSON is 400 without echoing the body', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes', {
    method: 'POST',
    token: 'manager-token',
    body: '{"session_id": "secret-value", ',
    headers: { 'content-type': 'application/json' },
  });
  assert.equal(response.status, 400);
  const text = await response.text();
  assert.equal(text.includes('secret-value'), false);
  assert.equal(JSON.parse(text).type, 'https://appproxy.dev/problems/bad_request');
});

test('JSON string body is 400', async (t) => {
  const harness = await start(t);
  const response = await sendJson(harness, 'POST', '/routes', 'just a string');
  assert.equal(response.status, 400);
});

test('unknown body field is 400 with its path', async (t) => {
  const harness = await start(t);
  const body = { ...VALID_ROUTE_BODY, colour: 'blue', backends: [{ host: 'h', port: 70000 }] };
  const response = await sendJson(harness, 'POST', '/routes', body);
  assert.equal(response.status, 400);
  const problem = await readProblem(response);
  const issues = problem.issues as Array<{ path: string; message: string; expected?: string }>;
  const paths = issues.map((issue) => issue.path).sort();
  assert.deepEqual(paths, ['backends.0.port', 'colour']);
  const port = issues.find((issue) => issue.path === 'backends.0.port');
  assert.equal(port?.expected, '<=65535');
  assert.equal(harness.calls.length, 0);
});

test('nested unknown field is 400', async (t) => {
  const harness = await start(t);
  const body = { backends: [{ host: 'h', port: 80, extra: true }] };
  const response = await sendJson(harness, 'PATCH', `/routes/${ROUTE_ID}`, body);
  assert.equal(response.status, 400);
  const problem = await readProblem(response);
  const issues = problem.issues as Array<{ path: string }>;
  assert.deepEqual(issues.map((issue) => issue.path), ['backends.0.extra']);
});

test('POST without body lists missing fields', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes', { method: 'POST', token: 'manager-token' });
  assert.equal(response.status, 400);
  const problem = await readProblem(response);
  const paths = (problem.issues as Array<{ path: string }>).map((issue) => issue.path);
  assert.deepEqual(paths.sort(), ['backends', 'service', 'session_id']);
});

test('unknown query parameter is 400', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes?colour=blue', { token: 'read-token' });
  assert.equal(response.status, 400);
  const problem = await readProblem(response);
  assert.deepEqual(problem.issues, [
    {
      path: 'colour',
      message: 'unknown query parameter colour; remove it',
      expected: 'never',
      received: '"colour"',
    },
  ]);
});

const AUTH_CASES: Array<{ method: string; path: string; token?: string; status: number }> = [
  { method: 'GET', path: '/routes', status: 401 },
  { method: 'GET', path: '/routes', token: 'nope', status: 401 },
  { method: 'GET', path: '/routes', token: 'worker-token', status: 403 },
  { method: 'GET', path: '/routes', token: 'session-token', status: 403 },
  { method: 'DELETE', path: `/routes/${ROUTE_ID}`, token: 'read-token', status: 403 },
  { method: 'POST', path: '/routes', token: 'read-token', status: 403 },
  { method: 'POST', path: '/workers/register', token: 'manager-token', status: 403 },
  { method: 'POST', path: '/workers/register', status: 401 },
  { method: 'GET', path: '/workers', token: 'worker-token', status: 403 },
  { method: 'DELETE', path: `/workers/${WORKER_ID}`, token: 'read-token', status: 403 },
  { method: 'DELETE', path: '/sessions/s1/routes', token: 'read-token', status: 403 },
  { method: 'GET', path: '/events', token: 'worker-token', status: 403 },
  { method: 'GET', path: '/metrics', status: 401 },
  { method: 'GET', path: '/lookup?host=a.b.test', token: 'worker-token', status: 403 },
  { method: 'GET', path: '/lookup?host=a.b.test', status: 401 },
];

test('endpoints reject missing and wrong tokens', async (t) => {
  const harness = await start(t);
  for (const { method, path, token, status } of AUTH_CASES) {
    const response = await send(harness, path, { method, token });
    const label = `${method} ${path} with ${token ?? 'no token'}`;
    assert.equal(response.status, status, label);
    const problem = await readProblem(response);
    assert.equal(problem.status, status, label);
  }
  assert.equal(harness.calls.length, 0);
});

test('401 names no token', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes', { token: 'guessed-secret-123' });
  assert.equal(response.status, 401);
  assert.equal(response.headers.get('www-authenticate'), 'Bearer error="invalid_token"');
  const text = await response.text();
  assert.equal(text.includes('guessed-secret-123'), false);
});

test('non-bearer Authorization is 401', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes', {
    headers: { authorization: 'Basic bWFuYWdlcjp4' },
  });
  assert.equal(response.status, 401);
});

test('health and openapi need no token', async (t) => {
  const harness = await start(t);
  const health = await send(harness, '/health');
  assert.equal(health.status, 200);
  const openapi = await send(harness, '/openapi.json');
  assert.equal(openapi.status, 200);
  const document = (await openapi.json()) as { openapi: string; paths: Record<string, unknown> };
  assert.equal(document.openapi, '3.1.0');
  assert.ok('/routes/{id}' in document.paths);
});

test('health is 503 while the database is down', async (t) => {
  const harness = await start(t, (deps) => {
    deps.health = async () => ({ status: 'unavailable', db: 'down' });
  });
  const response = await send(harness, '/health');
  assert.equal(response.status, 503);
  assert.equal(((await response.json()) as { db: string }).db, 'down');
});

test('non-uuid path id is 404', async (t) => {
  const harness = await start(t);
  const cases = [
    { method: 'GET', path: '/routes/not-a-uuid' },
    { method: 'PATCH', path: '/routes/12345' },
    { method: 'DELETE', path: '/routes/12345' },
    { method: 'GET', path: '/workers/abc' },
    { method: 'DELETE', path: '/workers/abc' },
  ];
  for (const { method, path } of cases) {
    const response = await send(harness, path, { method, token: 'manager-token' });
    assert.equal(response.status, 404, `${method} ${path}`);
    const problem = await readProblem(response);
    assert.equal(problem.type, 'https://appproxy.dev/problems/not_found');
  }
  assert.equal(harness.calls.length, 0);
});

test('unknown route id is 404', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/routes/${OTHER_WORKER_ID}`, { token: 'read-token' });
  assert.equal(response.status, 404);
});

test('unknown path is 404 problem', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/nowhere', { token: 'manager-token' });
  assert.equal(response.status, 404);
  assert.equal((await readProblem(response)).status, 404);
});

test('wrong method is 405 with Allow', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/openapi.json', { method: 'POST' });
  assert.equal(response.status, 405);
  assert.match(response.headers.get('allow') ?? '', /GET/);
  assert.equal((await readProblem(response)).status, 405);
});

test('request id is generated when absent', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/health');
  assert.match(response.headers.get('x-request-id') ?? '', /^[0-9a-f-]{36}$/);
});

test('well-formed incoming request id is kept', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes', { headers: { 'x-request-id': 'abc.DEF_1-2' } });
  assert.equal(response.headers.get('x-request-id'), 'abc.DEF_1-2');
  assert.equal((await readProblem(response)).request_id, 'abc.DEF_1-2');
});

test('malformed incoming request id is replaced', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/health', { headers: { 'x-request-id': 'a b<c>' } });
  const requestId = response.headers.get('x-request-id') ?? '';
  assert.notEqual(requestId, 'a b<c>');
  assert.match(requestId, /^[0-9a-f-]{36}$/);
});

test('500 hides details and logs them', async (t) => {
  const harness = await start(t, (deps) => {
    deps.routes.get = async () => {
      throw new Error('connection string postgres://user:pw@db/x is broken');
    };
  });
  const response = await send(harness, `/routes/${ROUTE_ID}`, { token: 'read-token' });
  assert.equal(response.status, 500);
  const requestId = response.headers.get('x-request-id');
  const text = await response.text();
  assert.equal(text.includes('postgres://'), false);
  const problem = JSON.parse(text) as Record<string, unknown>;
  assert.equal(problem.request_id, requestId);
  const members = Object.keys(problem).sort();
  assert.deepEqual(members, ['detail', 'request_id', 'status', 'title', 'type']);
  const logged = harness.logLines.map((line) => JSON.parse(line)).find((e) => e.level === 50);
  assert.equal(logged?.request_id, requestId);
  assert.match(logged?.err?.message ?? '', /is broken/);
});

test('database outage on a read is 503', async (t) => {
  const harness = await start(t, (deps) => {
    deps.routes.get = async () => {
      throw Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    };
  });
  const response = await send(harness, `/routes/${ROUTE_ID}`, { token: 'read-token' });
  assert.equal(response.status, 503);
  const problem = await readProblem(response);
  assert.equal(problem.type, 'https://appproxy.dev/problems/database_unavailable');
});

test('conflict carries conflicting_route_id', async (t) => {
  const harness = await start(t, (deps) => {
    deps.routes.create = async () => {
      throw new ConflictError('taken', ROUTE_ID);
    };
  });
  const response = await sendJson(harness, 'POST', '/routes', VALID_ROUTE_BODY);
  assert.equal(response.status, 409);
  assert.equal((await readProblem(response)).conflicting_route_id, ROUTE_ID);
});

test('GET /routes/:id sets ETag', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/routes/${ROUTE_ID}`, { token: 'read-token' });
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('etag'), '"7"');
});

test('If-Match revision reaches the service', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/routes/${ROUTE_ID}`, {
    method: 'DELETE',
    token: 'manager-token',
    headers: { 'if-match': '"7"' },
  });
  assert.equal(response.status, 204);
  assert.deepEqual(harness.calls, [{ method: 'remove', args: [ROUTE_ID, 7] }]);
});

test('malformed If-Match is 400', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/routes/${ROUTE_ID}`, {
    method: 'DELETE',
    token: 'manager-token',
    headers: { 'if-match': 'W/"7"' },
  });
  assert.equal(response.status, 400);
  assert.equal(harness.calls.length, 0);
});

test('POST /routes answers 201 for a new route', async (t) => {
  const harness = await start(t);
  const response = await sendJson(harness, 'POST', '/routes', VALID_ROUTE_BODY);
  assert.equal(response.status, 201);
  const created = harness.calls[0].args[0] as Record<string, unknown>;
  assert.equal(created.protocol, 'http');
});

test('wait=applied answers active route', async (t) => {
  const harness = await start(t, (deps) => {
    deps.waitForApplied = async () => true;
    deps.routes.get = async () => sampleRoute({ status: 'active' });
  });
  const response = await sendJson(harness, 'POST', '/routes?wait=applied', VALID_ROUTE_BODY);
  assert.equal(response.status, 201);
  assert.equal(((await response.json()) as Route).status, 'active');
});

test('wait=applied timeout answers 202', async (t) => {
  const waits: unknown[][] = [];
  const harness = await start(t, (deps) => {
    deps.waitForApplied = async (...args) => (waits.push(args), false);
  });
  const path = `/routes/${ROUTE_ID}?wait=applied&timeout_ms=250`;
  const response = await sendJson(harness, 'PATCH', path, { open_to_public: true });
  assert.equal(response.status, 202);
  assert.equal(((await response.json()) as Route).status, 'pending');
  assert.deepEqual(waits, [[ROUTE_ID, 7, 250]]);
});

test('timeout_ms over 30000 is 400', async (t) => {
  const harness = await start(t);
  const path = '/routes?wait=applied&timeout_ms=30001';
  const response = await sendJson(harness, 'POST', path, VALID_ROUTE_BODY);
  assert.equal(response.status, 400);
  const problem = await readProblem(response);
  assert.equal((problem.issues as Array<{ path: string }>)[0].path, 'timeout_ms');
});

test('GET /routes pages with cursor', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/routes?limit=1&service=jupyter', { token: 'read-token' });
  assert.equal(response.status, 200);
  const page = (await response.json()) as { routes: Route[]; next_cursor: string | null };
  // The fake returns one route for a request of two, so this is the last page.
  assert.equal(page.next_cursor, null);
  assert.deepEqual(harness.calls[0].args, [
    { session_id: undefined, worker_id: undefined, service: 'jupyter' },
    2,
    undefined,
  ]);
});

test('GET /routes returns next_cursor when more follow', async (t) => {
  const second = sampleRoute({ id: OTHER_WORKER_ID });
  const harness = await start(t, (deps) => {
    deps.routes.list = async () => [sampleRoute(), second];
  });
  const first = await send(harness, '/routes?limit=1', { token: 'read-token' });
  const page = (await first.json()) as { routes: Route[]; next_cursor: string };
  assert.equal(page.routes.length, 1);
  assert.equal(Buffer.from(page.next_cursor, 'base64url').toString(), ROUTE_ID);
});

test('GET /routes with bad cursor or limit is 400', async (t) => {
  const harness = await start(t);
  for (const query of ['cursor=bm9wZQ', 'limit=0', 'limit=1001', 'limit=ten']) {
    const response = await send(harness, `/routes?${query}`, { token: 'read-token' });
    assert.equal(response.status, 400, query);
  }
});

test('session id path is decoded exactly', async (t) => {
  const harness = await start(t);
  const path = `/sessions/${encodeURIComponent('team a/s 1')}/routes`;
  const response = await send(harness, path, { method: 'DELETE', token: 'manager-token' });
  assert.equal(response.status, 200);
  assert.deepEqual(await response.json(), { deleted: 2 });
  assert.deepEqual(harness.calls, [{ method: 'removeSession', args: ['team a/s 1'] }]);
});

test('session id over 128 characters is 404', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/sessions/${'s'.repeat(129)}/routes`, {
    token: 'read-token',
  });
  assert.equal(response.status, 404);
});

test('lookup with session token stays on its worker', async (t) => {
  const harness = await start(t);
  const own = await send(harness, `/lookup?worker_id=${WORKER_ID}&port=20001`, {
    token: 'session-token',
  });
  assert.equal(own.status, 200);
  const other = await send(harness, `/lookup?worker_id=${OTHER_WORKER_ID}&port=20001`, {
    token: 'session-token',
  });
  assert.equal(other.status, 404);
  const byHost = await send(harness, '/lookup?host=jupyter-s1.apps.example.test', {
    token: 'session-token',
  });
  assert.equal(byHost.status, 404);
  assert.deepEqual(harness.calls, [
    { method: 'findByPort', args: [WORKER_ID, 20001] },
    { method: 'findByHost', args: ['jupyter-s1.apps.example.test', WORKER_ID] },
  ]);
});

test('lookup without an address is 400', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/lookup?port=20001', { token: 'read-token' });
  assert.equal(response.status, 400);
});

test('metrics without exporter is 404', async (t) => {
  const harness = await start(t);
  const response = await send(harness, '/metrics', { token: 'read-token' });
  assert.equal(response.status, 404);
});

test('metrics returns exporter text', async (t) => {
  const harness = await start(t, (deps) => {
    deps.metrics = async () => ({ contentType: 'text/plain; version=0.0.4', body: 'up 1\n' });
  });
  const response = await send(harness, '/metrics', { token: 'read-token' });
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
  assert.equal(await response.text(), 'up 1\n');
});

test('worker registration answers 201 then 200', async (t) => {
  const harness = await start(t);
  const body = { frontend_mode: 'port', hostname: 'proxy.test', port_range: [20000, 20099] };
  const register = (authority: string) =>
    send(harness, '/workers/register', {
      method: 'POST',
      token: 'worker-token',
      body: JSON.stringify({ ...body, authority }),
      headers: { 'content-type': 'application/json' },
    });
  assert.equal((await register('new-worker')).status, 201);
  assert.equal((await register('known-worker')).status, 200);
});

test('registration without port_range is 400', async (t) => {
  const harness = await start(t);
  const body = { authority: 'w1', frontend_mode: 'port', hostname: 'proxy.test' };
  const response = await send(harness, '/workers/register', {
    method: 'POST',
    token: 'worker-token',
    body: JSON.stringify(body),
    headers: { 'content-type': 'application/json' },
  });
  assert.equal(response.status, 400);
  const problem = await readProblem(response);
  assert.equal((problem.issues as Array<{ path: string }>)[0].path, 'port_range');
});

test('DELETE /workers/:id answers 204', async (t) => {
  const harness = await start(t);
  const response = await send(harness, `/workers/${WORKER_ID}`, {
    method: 'DELETE',
    token: 'manager-token',
  });
  assert.equal(response.status, 204);
  assert.deepEqual(harness.calls, [{ method: 'deregister', args: [WORKER_ID] }]);
});
