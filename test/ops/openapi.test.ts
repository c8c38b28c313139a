import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import * as v from 'valibot';
import type {
  DrainWorkerResponse,
  Nack,
  Problem,
  RegisterWorkerResponse,
  Route,
  RouteEvent,
  SessionRoutesResponse,
  Worker,
  WorkerInstance,
} from '../../proto/index.ts';
import { createHttpApp, type HttpDeps } from '../../src/http/app.ts';
import { ENDPOINTS, OPENAPI_DOCUMENT, type Endpoint } from '../../src/http/openapi.ts';
import * as responses from '../../src/http/response-schemas.ts';
import type { Health } from '../../src/services/status.ts';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { isEmbeddedRun, postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

// Compile-time checks: each response schema has exactly the type of its proto counterpart, so a
// field added to proto/ without the schema (or the reverse) fails `tsc`.
type Equals<A, B> =
  (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
type Expect<T extends true> = T;
type Output<S extends v.GenericSchema> = v.InferOutput<S>;
export type ResponseTypesMatchProto = [
  Expect<Equals<Output<typeof responses.RouteResponseSchema>, Route>>,
  Expect<Equals<Output<typeof responses.WorkerResponseSchema>, Worker>>,
  Expect<Equals<Output<typeof responses.WorkerInstanceResponseSchema>, WorkerInstance>>,
  Expect<Equals<Output<typeof responses.NackResponseSchema>, Nack>>,
  Expect<Equals<Output<typeof responses.RegisterWorkerResponseSchema>, RegisterWorkerResponse>>,
  Expect<Equals<Output<typeof responses.RouteEventResponseSchema>, RouteEvent>>,
  Expect<Equals<Output<typeof responses.ProblemResponseSchema>, Problem>>,
  Expect<Equals<Output<typeof responses.HealthResponseSchema>, Health>>,
  Expect<Equals<Output<typeof responses.SessionRoutesResponseSchema>, SessionRoutesResponse>>,
  Expect<Equals<Output<typeof responses.DrainWorkerResponseSchema>, DrainWorkerResponse>>,
];

const WEBSOCKET_PATHS = ['/workers/stream', '/events/stream'];

type Document = { paths: Record<string, Record<string, unknown>> };
const document = OPENAPI_DOCUMENT as Document;

/** Services that are never called: the tests only look at the mounted routes. */
function unusedDeps(): HttpDeps {
  const unused = () => {
    throw new Error('not called in this test');
  };
  return {
    routes: new Proxy({}, { get: () => unused }) as HttpDeps['routes'],
    workers: new Proxy({}, { get: () => unused }) as HttpDeps['workers'],
    events: { list: unused },
    auth: { identify: unused },
    health: unused,
    log: pino({ level: 'silent' }),
  };
}

/** Lists `METHOD /path/{param}` for every route layer of the app's router. */
function mountedOperations(): string[] {
  const app = createHttpApp(unusedDeps());
  const dispatchers = app.middleware.filter((middleware) => 'router' in middleware);
  assert.equal(dispatchers.length, 1, 'expected one router in the app');
  const router = (dispatchers[0] as unknown as { router: { stack: RouterLayer[] } }).router;
  const operations = new Set<string>();
  for (const layer of router.stack) {
    if (typeof layer.path !== 'string') continue;
    const path = layer.path.replace(/:(\w+)/g, '{$1}');
    for (const method of layer.methods) {
      if (method !== 'HEAD') operations.add(`${method} ${path}`);
    }
  }
  return [...operations].sort();
}

interface RouterLayer {
  path: string | RegExp;
  methods: string[];
}

function documentedOperations(): string[] {
  const operations: string[] = [];
  for (const [path, item] of Object.entries(document.paths)) {
    for (const method of Object.keys(item)) operations.push(`${method.toUpperCase()} ${path}`);
  }
  return operations.sort();
}

describe('openapi document', () => {
  test('documents every mounted route', () => {
    const mounted = mountedOperations();
    assert.ok(mounted.length >= 10, `found only ${mounted.join(', ')}`);
    const documented = new Set(documentedOperations());
    const missing = mounted.filter((operation) => !documented.has(operation));
    assert.deepEqual(missing, [], 'mounted but not in the OpenAPI document');
  });

  test('documents only mounted routes', () => {
    const mounted = new Set(mountedOperations());
    const upgrades = new Set(WEBSOCKET_PATHS.map((path) => `GET ${path}`));
    const extra = documentedOperations().filter((op) => !mounted.has(op) && !upgrades.has(op));
    assert.deepEqual(extra, [], 'in the OpenAPI document but not mounted');
  });

  test('is OpenAPI 3.1 with bodies for writes', () => {
    assert.equal((OPENAPI_DOCUMENT as { openapi: string }).openapi, '3.1.0');
    const create = document.paths['/routes'].post as { requestBody: any };
    const schema = create.requestBody.content['application/json'].schema;
    assert.deepEqual(schema.required, ['session_id', 'service', 'backends']);
    assert.equal(schema.additionalProperties, false);
  });

  test('references resolve to component schemas', () => {
    const text = JSON.stringify(OPENAPI_DOCUMENT);
    const components = (OPENAPI_DOCUMENT as { components: Record<string, Record<string, unknown>> })
      .components;
    for (const [, kind, name] of text.matchAll(/"#\/components\/(\w+)\/(\w+)"/g)) {
      assert.ok(components[kind]?.[name], `unresolved reference ${kind}/${name}`);
    }
  });

  test('query parameters come from the proto schemas', () => {
    const list = document.paths['/routes'].get as { parameters: Array<{ name: string }> };
    const names = list.parameters.map((parameter) => parameter.name).sort();
    assert.deepEqual(names, ['cursor', 'limit', 'service', 'session_id', 'worker_id']);
  });
});

/** One curl command of the README that sends a JSON body. */
interface CurlExample {
  method: string;
  url: URL;
  body: unknown;
  text: string;
}

function readmeCurlExamples(readme: string): CurlExample[] {
  const commands = readme.replace(/\\\n/g, ' ').split('\n').filter((line) => /\bcurl\b/.test(line));
  const examples: CurlExample[] = [];
  for (const text of commands) {
    const data = /(?:-d|--data|--data-raw) '([^']*)'/.exec(text);
    const url = /(https?:\/\/[^\s'"]+)/.exec(text);
    if (!data || !url) continue;
    const method = /-X\s+([A-Z]+)/.exec(text)?.[1] ?? 'POST';
    examples.push({ method, url: new URL(url[1]), body: JSON.parse(data[1]), text });
  }
  return examples;
}

function findEndpoint(method: string, path: string): Endpoint | undefined {
  return ENDPOINTS.find((endpoint) => {
    if (endpoint.method !== method.toLowerCase()) return false;
    const pattern = endpoint.path.replace(/\{\w+\}/g, '[^/]+');
    return new RegExp(`^${pattern}$`).test(path);
  });
}

describe('README request examples', () => {
  test('validate against the request schemas', async () => {
    const readme = await readFile(new URL('../../README.md', import.meta.url), 'utf8');
    const examples = readmeCurlExamples(readme);
    assert.ok(examples.length >= 1, 'the README has no curl example with a JSON body');
    for (const example of examples) {
      const endpoint = findEndpoint(example.method, example.url.pathname);
      assert.ok(endpoint, `no endpoint for ${example.method} ${example.url.pathname}`);
      assert.ok(endpoint.body, `${example.method} ${example.url.pathname} takes no body`);
      const body = v.safeParse(endpoint.body, example.body);
      assert.ok(body.success, `${example.text}\n${JSON.stringify(body.issues)}`);
      if (!endpoint.query) continue;
      const query = v.safeParse(endpoint.query, Object.fromEntries(example.url.searchParams));
      assert.ok(query.success, `${example.text}\n${JSON.stringify(query.issues)}`);
    }
  });
});

const skip = isEmbeddedRun ? undefined : await postgresSkipReason();

describe('responses match the documented schemas', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  let route: Route;

  before(async () => {
    coordinator = await startTestCoordinator();
    worker = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: coordinator.tokens.worker,
    });
    await worker.register();
    await worker.connect();
    const created = await coordinator.api('POST', '/routes?wait=applied&timeout_ms=5000', {
      session_id: 'schema-session',
      service: 'jupyter',
      backends: [{ host: '127.0.0.1', port: 8888 }],
    });
    assert.equal(created.status, 201);
    route = created.body;
  });

  after(async () => {
    await worker?.close();
    await coordinator?.stop();
  });

  function assertMatches(schema: v.GenericSchema, body: unknown, what: string): void {
    const result = v.safeParse(schema, body);
    assert.ok(result.success, `${what}: ${JSON.stringify(result.issues?.map((i) => i.message))}`);
  }

  test('registration response', () => {
    assertMatches(responses.RegisterWorkerResponseSchema, worker.registration, 'register');
  });

  test('route and route list', async () => {
    assertMatches(responses.RouteResponseSchema, route, 'POST /routes');
    const list = await coordinator.api('GET', '/routes');
    assertMatches(responses.RouteListResponseSchema, list.body, 'GET /routes');
    const session = await coordinator.api('GET', '/sessions/schema-session/routes');
    assertMatches(responses.SessionRouteListResponseSchema, session.body, 'session routes');
  });

  test('worker and worker list', async () => {
    const list = await coordinator.api('GET', '/workers');
    assertMatches(responses.WorkerListResponseSchema, list.body, 'GET /workers');
    const one = await coordinator.api('GET', `/workers/${worker.id}`);
    assertMatches(responses.WorkerResponseSchema, one.body, 'GET /workers/:id');
  });

  test('events, health and problems', async () => {
    const events = await coordinator.api('GET', '/events');
    assert.ok(events.body.events.length > 0);
    assertMatches(responses.EventListResponseSchema, events.body, 'GET /events');
    const health = await coordinator.api('GET', '/health');
    assertMatches(responses.HealthResponseSchema, health.body, 'GET /health');
    const invalid = await coordinator.api('POST', '/routes', { session_id: '' });
    assert.equal(invalid.status, 400);
    assertMatches(responses.ProblemResponseSchema, invalid.body, '400 problem');
  });
});
