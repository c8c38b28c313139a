import {
  toJsonSchema,
  toJsonSchemaDefs,
  type ConversionConfig,
  type JsonSchema,
} from '@valibot/to-json-schema';
import type * as v from 'valibot';
import {
  CreateRouteBodySchema,
  DrainWorkerBodySchema,
  EventStreamQuerySchema,
  ListEventsQuerySchema,
  ListRoutesQuerySchema,
  LookupQuerySchema,
  PatchRouteBodySchema,
  RegisterWorkerBodySchema,
  SessionIdSchema,
  SessionRoutesBodySchema,
  UuidSchema,
} from '../../proto/index.ts';
import {
  DeletedCountResponseSchema,
  DrainWorkerResponseSchema,
  EventListResponseSchema,
  HealthResponseSchema,
  NAMED_RESPONSE_SCHEMAS,
  RegisterWorkerResponseSchema,
  RouteListResponseSchema,
  RouteResponseSchema,
  SessionRouteListResponseSchema,
  SessionRoutesResponseSchema,
  WorkerListResponseSchema,
  WorkerResponseSchema,
} from './response-schemas.ts';
import { WriteQuerySchema } from './route-handlers.ts';

// The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`. Request bodies and
// query parameters are generated from the valibot schemas the handlers validate with, so the
// document cannot drift from what the coordinator accepts.

type Token = 'manager' | 'read' | 'worker' | 'session';
type Method = 'get' | 'post' | 'put' | 'patch' | 'delete';
type AnySchema = v.GenericSchema;

/** One response of an endpoint: a description, and a JSON body schema when it has one. */
interface ResponseSpec {
  description: string;
  body?: AnySchema;
  /** Media type of a body that is not JSON. */
  mediaType?: string;
}

/** One operation of the API. */
export interface Endpoint {
  method: Method;
  /** OpenAPI path template, such as `/routes/{id}`. */
  path: string;
  summary: string;
  tokens: Token[];
  query?: AnySchema;
  body?: AnySchema;
  /** Whether the operation honours `If-Match` with a route's ETag. */
  acceptsIfMatch?: boolean;
  /** Statuses besides the problems that every operation may return. */
  responses: Record<string, ResponseSpec>;
}

const PROBLEM_TYPE = 'application/problem+json';

const ROUTE: ResponseSpec = { description: 'the route', body: RouteResponseSchema };
const ROUTE_NOT_APPLIED: ResponseSpec = {
  description: 'written, but not acknowledged by every connected instance within timeout_ms',
  body: RouteResponseSchema,
};

/** Every REST operation, and the two WebSocket endpoints as upgrades. */
export const ENDPOINTS: readonly Endpoint[] = [
  {
    method: 'get',
    path: '/health',
    summary: 'Database and worker health',
    tokens: [],
    responses: {
      200: { description: 'the database is up', body: HealthResponseSchema },
      503: { description: 'the database is down', body: HealthResponseSchema },
    },
  },
  {
    method: 'post',
    path: '/workers/register',
    summary: 'Register a worker instance',
    tokens: ['worker'],
    body: RegisterWorkerBodySchema,
    responses: {
      200: { description: 'the authority registered again', body: RegisterWorkerResponseSchema },
      201: { description: 'a new worker', body: RegisterWorkerResponseSchema },
      409: { description: 'the wildcard domain belongs to another worker' },
    },
  },
  {
    method: 'get',
    path: '/workers/stream',
    summary: 'Worker session: WebSocket upgrade with the session token of a registration',
    tokens: ['session'],
    responses: { 101: { description: 'switching to the worker session protocol' } },
  },
  {
    method: 'get',
    path: '/workers',
    summary: 'List workers',
    tokens: ['manager', 'read'],
    responses: { 200: { description: 'every worker', body: WorkerListResponseSchema } },
  },
  {
    method: 'get',
    path: '/workers/{id}',
    summary: 'Read a worker',
    tokens: ['manager', 'read'],
    responses: {
      200: { description: 'the worker', body: WorkerResponseSchema },
      404: { description: 'unknown worker' },
    },
  },
  {
    method: 'delete',
    path: '/workers/{id}',
    summary: 'Deregister a worker: its sessions close with 4404 and its routes fail over',
    tokens: ['manager'],
    responses: {
      204: { description: 'deregistered' },
      404: { description: 'unknown worker' },
    },
  },
  {
    method: 'post',
    path: '/workers/{id}/drain',
    summary: 'Drain a worker: no new routes; with {"move": true} its routes move now',
    tokens: ['manager'],
    body: DrainWorkerBodySchema,
    responses: {
      200: { description: 'the worker, and how many routes moved', body: DrainWorkerResponseSchema },
      404: { description: 'unknown worker' },
      409: { description: 'the worker is lost or deregistered' },
    },
  },
  {
    method: 'post',
    path: '/routes',
    summary: 'Create a route, or return the existing one with the same spec',
    tokens: ['manager'],
    query: WriteQuerySchema,
    body: CreateRouteBodySchema,
    responses: {
      200: { description: 'a route with the same spec exists', body: RouteResponseSchema },
      201: { description: 'created', body: RouteResponseSchema },
      202: ROUTE_NOT_APPLIED,
      409: { description: 'the route exists with another spec, or the port or subdomain is taken' },
      503: { description: 'no live worker can take the route' },
    },
  },
  {
    method: 'get',
    path: '/routes',
    summary: 'List routes, a page at a time',
    tokens: ['manager', 'read'],
    query: ListRoutesQuerySchema,
    responses: { 200: { description: 'one page of routes', body: RouteListResponseSchema } },
  },
  {
    method: 'get',
    path: '/routes/{id}',
    summary: 'Read a route; the ETag header carries its revision',
    tokens: ['manager', 'read'],
    responses: { 200: ROUTE, 404: { description: 'unknown route' } },
  },
  {
    method: 'patch',
    path: '/routes/{id}',
    summary: 'Change a route; each given field replaces the stored one',
    tokens: ['manager'],
    query: WriteQuerySchema,
    body: PatchRouteBodySchema,
    acceptsIfMatch: true,
    responses: {
      200: { description: 'the route after the change', body: RouteResponseSchema },
      202: ROUTE_NOT_APPLIED,
      404: { description: 'unknown route' },
      412: { description: 'If-Match does not match the current revision' },
    },
  },
  {
    method: 'delete',
    path: '/routes/{id}',
    summary: 'Delete a route',
    tokens: ['manager'],
    query: WriteQuerySchema,
    acceptsIfMatch: true,
    responses: {
      204: { description: 'deleted (and, with wait=applied, acknowledged by every connected instance)' },
      202: {
        description:
          'deleted, but not acknowledged by every connected instance within timeout_ms; ' +
          'the body has id, worker_id, the revision of the deletion and status "pending"',
      },
      404: { description: 'unknown route' },
      412: { description: 'If-Match does not match the current revision' },
    },
  },
  {
    method: 'get',
    path: '/sessions/{session_id}/routes',
    summary: "List a session's routes (service discovery)",
    tokens: ['manager', 'read'],
    responses: { 200: { description: 'the routes', body: SessionRouteListResponseSchema } },
  },
  {
    method: 'put',
    path: '/sessions/{session_id}/routes',
    summary: "Make a session's routes exactly the listed ones, in one transaction",
    tokens: ['manager'],
    body: SessionRoutesBodySchema,
    responses: {
      200: { description: 'counts of changes, and the routes', body: SessionRoutesResponseSchema },
      409: { description: 'a requested port or subdomain is taken' },
      503: { description: 'no live worker can take one of the routes' },
    },
  },
  {
    method: 'delete',
    path: '/sessions/{session_id}/routes',
    summary: "Delete a session's routes whatever their status",
    tokens: ['manager'],
    responses: { 200: { description: 'how many were deleted', body: DeletedCountResponseSchema } },
  },
  {
    method: 'get',
    path: '/lookup',
    summary: 'Find the route served at a wildcard host, or at a worker port',
    tokens: ['manager', 'read', 'session'],
    query: LookupQuerySchema,
    responses: { 200: ROUTE, 404: { description: 'no route is served there' } },
  },
  {
    method: 'get',
    path: '/events',
    summary: 'List stored events after a revision',
    tokens: ['manager', 'read'],
    query: ListEventsQuerySchema,
    responses: {
      200: { description: 'events and the current revision', body: EventListResponseSchema },
      410: { description: 'since is older than the change log keeps; see oldest_revision' },
    },
  },
  {
    method: 'get',
    path: '/events/stream',
    summary: 'Live events: WebSocket upgrade; one RouteEvent per text frame',
    tokens: ['manager', 'read'],
    query: EventStreamQuerySchema,
    responses: { 101: { description: 'switching to the event stream' } },
  },
  {
    method: 'get',
    path: '/metrics',
    summary: 'Prometheus metrics',
    tokens: ['manager', 'read'],
    responses: {
      200: { description: 'Prometheus text format 0.0.4', mediaType: 'text/plain; version=0.0.4' },
    },
  },
  {
    method: 'get',
    path: '/openapi.json',
    summary: 'This document',
    tokens: [],
    responses: { 200: { description: 'OpenAPI 3.1 document', mediaType: 'application/json' } },
  },
];

/**
 * Request schemas are described as clients send them (typeMode `input`); checks
 * that JSON Schema cannot express are appended to the description.
 */
const CONVERSION: ConversionConfig = {
  target: 'draft-2020-12',
  typeMode: 'input',
  errorMode: 'ignore',
  definitions: NAMED_RESPONSE_SCHEMAS,
  overrideRef: (context) => `#/components/schemas/${context.referenceId}`,
  overrideAction: (context) => {
    if (context.valibotAction.type !== 'check') return undefined;
    const message = (context.valibotAction as { message?: unknown }).message;
    if (typeof message !== 'string') return undefined;
    const description = joinText(context.jsonSchema.description, message);
    return { ...context.jsonSchema, description };
  },
};

function joinText(first: string | undefined, second: string): string {
  return first ? `${first}; ${second}` : second;
}

/** Converts a schema for use inside the document, without the root-only keywords. */
function convert(schema: AnySchema): JsonSchema {
  const { $schema: _schema, $defs: _defs, ...rest } = toJsonSchema(schema, CONVERSION);
  return rest;
}

function toOperation(endpoint: Endpoint): Record<string, unknown> {
  const operation: Record<string, unknown> = {
    summary: endpoint.summary,
    security: endpoint.tokens.length === 0 ? [] : [{ bearer: [] }],
    'x-token-kinds': endpoint.tokens,
  };
  const parameters = [
    ...pathParameters(endpoint.path),
    ...queryParameters(endpoint),
    ...(endpoint.acceptsIfMatch ? [IF_MATCH_PARAMETER] : []),
  ];
  if (parameters.length > 0) operation.parameters = parameters;
  const queryRule = endpoint.query ? convert(endpoint.query).description : undefined;
  if (queryRule) operation.description = `Query rule: ${queryRule}.`;
  if (endpoint.body) {
    const schema = convert(endpoint.body);
    operation.requestBody = { required: true, content: { 'application/json': { schema } } };
  }
  operation.responses = toResponses(endpoint);
  return operation;
}

const IF_MATCH_PARAMETER = {
  name: 'If-Match',
  in: 'header',
  required: false,
  description: 'the ETag of GET /routes/{id}; the write fails with 412 if the route changed since',
  schema: { type: 'string' },
};

function pathParameters(path: string): unknown[] {
  const names = [...path.matchAll(/\{(\w+)\}/g)].map((match) => match[1]);
  return names.map((name) => ({
    name,
    in: 'path',
    required: true,
    schema: convert(name === 'session_id' ? SessionIdSchema : UuidSchema),
  }));
}

/** Turns the properties of an object query schema into one parameter each. */
function queryParameters(endpoint: Endpoint): unknown[] {
  if (!endpoint.query) return [];
  const object = convert(endpoint.query);
  const required = new Set(object.required ?? []);
  return Object.entries(object.properties ?? {}).map(([name, schema]) => ({
    name,
    in: 'query',
    required: required.has(name),
    schema,
  }));
}

function toResponses(endpoint: Endpoint): Record<string, unknown> {
  const responses: Record<string, unknown> = {};
  for (const [status, spec] of Object.entries(endpoint.responses)) {
    responses[status] = toResponse(Number(status), spec);
  }
  const problem = { $ref: '#/components/responses/Problem' };
  if (endpoint.query || endpoint.body) responses['400'] ??= problem;
  if (endpoint.tokens.length > 0) {
    responses['401'] ??= problem;
    responses['403'] ??= problem;
  }
  responses.default = problem;
  return responses;
}

function toResponse(status: number, spec: ResponseSpec): Record<string, unknown> {
  const response: Record<string, unknown> = { description: spec.description };
  if (spec.body) {
    response.content = { 'application/json': { schema: convert(spec.body) } };
  } else if (spec.mediaType) {
    response.content = { [spec.mediaType]: { schema: { type: 'string' } } };
  } else if (status >= 400) {
    response.content = { [PROBLEM_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } };
  }
  return response;
}

function buildDocument(): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const endpoint of ENDPOINTS) {
    paths[endpoint.path] ??= {};
    paths[endpoint.path][endpoint.method] = toOperation(endpoint);
  }
  const { definitions: _definitions, ...defsConfig } = CONVERSION;
  return {
    openapi: '3.1.0',
    info: { title: 'App proxy coordinator', version: '0.1.0' },
    jsonSchemaDialect: 'https://json-schema.org/draft/2020-12/schema',
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: toJsonSchemaDefs(NAMED_RESPONSE_SCHEMAS, defsConfig),
      responses: {
        Problem: {
          description: 'An error, as RFC 9457 problem details with request_id',
          content: { [PROBLEM_TYPE]: { schema: { $ref: '#/components/schemas/Problem' } } },
        },
      },
    },
    paths,
  };
}

/** The OpenAPI 3.1 document of the REST API, served at `GET /openapi.json`. */
export const OPENAPI_DOCUMENT = buildDocument();
