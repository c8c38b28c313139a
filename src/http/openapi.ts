// TODO: generate this document from the valibot schemas in proto/, so that it describes
// request and response bodies too. Today it lists only paths, methods, tokens and statuses.

type Token = 'manager' | 'read' | 'worker' | 'session';

interface Endpoint {
  method: 'get' | 'post' | 'patch' | 'delete';
  path: string;
  summary: string;
  tokens: Token[];
  /** Status codes besides the errors every endpoint may return. */
  statuses: Record<string, string>;
}

const UUID_PARAM = {
  name: 'id',
  in: 'path',
  required: true,
  schema: { type: 'string', format: 'uuid' },
};
const SESSION_PARAM = {
  name: 'session_id',
  in: 'path',
  required: true,
  schema: { type: 'string', minLength: 1, maxLength: 128 },
};

const ENDPOINTS: Endpoint[] = [
  {
    method: 'get',
    path: '/health',
    summary: 'Database and worker health',
    tokens: [],
    statuses: { 200: 'database up', 503: 'database down' },
  },
  {
    method: 'post',
    path: '/workers/register',
    summary: 'Register a worker instance',
    tokens: ['worker'],
    statuses: { 200: 're-registration', 201: 'new worker', 409: 'conflict' },
  },
  {
    method: 'get',
    path: '/workers/stream',
    summary: 'Worker session (WebSocket upgrade)',
    tokens: ['session'],
    statuses: { 101: 'switching protocols' },
  },
  {
    method: 'get',
    path: '/workers',
    summary: 'List workers',
    tokens: ['manager', 'read'],
    statuses: { 200: '{workers}' },
  },
  {
    method: 'get',
    path: '/workers/{id}',
    summary: 'Read a worker',
    tokens: ['manager', 'read'],
    statuses: { 200: 'Worker', 404: 'unknown worker' },
  },
  {
    method: 'delete',
    path: '/workers/{id}',
    summary: 'Deregister a worker',
    tokens: ['manager'],
    statuses: { 204: 'deregistered', 404: 'unknown worker' },
  },
  {
    method: 'post',
    path: '/routes',
    summary: 'Create a route',
    tokens: ['manager'],
    statuses: {
      200: 'same spec exists',
      201: 'created',
      202: 'not applied within timeout_ms',
      409: 'conflict',
      503: 'no live worker can take it',
    },
  },
  {
    method: 'get',
    path: '/routes',
    summary: 'List routes',
    tokens: ['manager', 'read'],
    statuses: { 200: '{routes, next_cursor}' },
  },
  {
    method: 'get',
    path: '/routes/{id}',
    summary: 'Read a route',
    tokens: ['manager', 'read'],
    statuses: { 200: 'Route with ETag', 404: 'unknown route' },
  },
  {
    method: 'patch',
    path: '/routes/{id}',
    summary: 'Change a route',
    tokens: ['manager'],
    statuses: {
      200: 'Route',
      202: 'not applied within timeout_ms',
      404: 'unknown route',
      412: 'If-Match failed',
    },
  },
  {
    method: 'delete',
    path: '/routes/{id}',
    summary: 'Delete a route',
    tokens: ['manager'],
    statuses: { 204: 'deleted', 404: 'unknown route', 412: 'If-Match failed' },
  },
  {
    method: 'get',
    path: '/sessions/{session_id}/routes',
    summary: "List a session's routes",
    tokens: ['manager', 'read'],
    statuses: { 200: '{routes}' },
  },
  {
    method: 'delete',
    path: '/sessions/{session_id}/routes',
    summary: "Delete a session's routes",
    tokens: ['manager'],
    statuses: { 200: '{deleted}' },
  },
  {
    method: 'get',
    path: '/lookup',
    summary: 'Find the route at a host or a worker port',
    tokens: ['manager', 'read', 'session'],
    statuses: { 200: 'Route', 404: 'no route there' },
  },
  {
    method: 'get',
    path: '/events',
    summary: 'List stored events after a revision',
    tokens: ['manager', 'read'],
    statuses: { 200: '{events, revision}', 410: 'compacted' },
  },
  {
    method: 'get',
    path: '/events/stream',
    summary: 'Live events (WebSocket upgrade)',
    tokens: ['manager', 'read'],
    statuses: { 101: 'switching protocols' },
  },
  {
    method: 'get',
    path: '/metrics',
    summary: 'Prometheus metrics',
    tokens: ['manager', 'read'],
    statuses: { 200: 'Prometheus text', 404: 'metrics not exported' },
  },
  {
    method: 'get',
    path: '/openapi.json',
    summary: 'This document',
    tokens: [],
    statuses: { 200: 'OpenAPI 3.1 document' },
  },
];

function toOperation(endpoint: Endpoint): Record<string, unknown> {
  const responses: Record<string, unknown> = {};
  for (const [status, description] of Object.entries(endpoint.statuses)) {
    responses[status] = { description };
  }
  if (endpoint.tokens.length > 0) responses['401'] = { $ref: '#/components/responses/Problem' };
  responses.default = { $ref: '#/components/responses/Problem' };

  const operation: Record<string, unknown> = {
    summary: endpoint.summary,
    responses,
    security: endpoint.tokens.length === 0 ? [] : [{ bearer: [] }],
    'x-token-kinds': endpoint.tokens,
  };
  const parameters = pathParameters(endpoint.path);
  if (parameters.length > 0) operation.parameters = parameters;
  return operation;
}

function pathParameters(path: string): unknown[] {
  if (path.includes('{id}')) return [UUID_PARAM];
  if (path.includes('{session_id}')) return [SESSION_PARAM];
  return [];
}

function buildDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const endpoint of ENDPOINTS) {
    paths[endpoint.path] ??= {};
    paths[endpoint.path][endpoint.method] = toOperation(endpoint);
  }
  return {
    openapi: '3.1.0',
    info: { title: 'App proxy coordinator', version: '0.1.0' },
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      responses: {
        Problem: {
          description: 'An error, as RFC 9457 problem details with request_id',
          content: { 'application/problem+json': { schema: { type: 'object' } } },
        },
      },
    },
    paths,
  };
}

/** The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`. */
export const OPENAPI_DOCUMENT = buildDocument();
