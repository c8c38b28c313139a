import * as v from 'valibot';
import {
  AuthoritySchema,
  BackendListSchema,
  CidrListSchema,
  FrontendModeSchema,
  HostSchema,
  LabelsSchema,
  PortSchema,
  RouteModeSchema,
  RouteProtocolSchema,
  ServiceSchema,
  SessionIdSchema,
  SubdomainSchema,
  UuidSchema,
  WildcardDomainSchema,
  WorkerProtocolSchema,
} from './fields.ts';

// REST request bodies and the shapes of the resources the API returns.

export const RegisterWorkerBodySchema = v.pipe(
  v.strictObject({
    authority: AuthoritySchema,
    instance_id: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9._-]{1,128}$/))),
    frontend_mode: FrontendModeSchema,
    hostname: HostSchema,
    protocols: v.optional(
      v.pipe(v.array(WorkerProtocolSchema), v.minLength(1), v.maxLength(2)),
      ['http'],
    ),
    port_range: v.optional(v.pipe(v.tuple([PortSchema, PortSchema]))),
    wildcard_domain: v.optional(WildcardDomainSchema),
    advertised_port: v.optional(PortSchema),
    capacity: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(10_000_000))),
    labels: v.optional(LabelsSchema, {}),
  }),
  v.forward(
    v.check(
      (body) => body.frontend_mode !== 'port' || body.port_range !== undefined,
      'port_range is required in port mode',
    ),
    ['port_range'],
  ),
  v.forward(
    v.check(
      (body) => body.port_range === undefined || body.port_range[0] <= body.port_range[1],
      'port_range must be [first, last] with first <= last',
    ),
    ['port_range'],
  ),
  v.forward(
    v.check(
      (body) => body.frontend_mode !== 'wildcard' || body.wildcard_domain !== undefined,
      'wildcard_domain is required in wildcard mode',
    ),
    ['wildcard_domain'],
  ),
  v.forward(
    v.check(
      (body) => body.frontend_mode === 'port' || !body.protocols.includes('tcp'),
      'tcp is served only in port mode',
    ),
    ['protocols'],
  ),
);
export type RegisterWorkerBody = v.InferOutput<typeof RegisterWorkerBodySchema>;

/** Seconds without client activity after which a route is deleted; at most one year. */
export const IdleTimeoutSchema = v.pipe(
  v.number(),
  v.integer(),
  v.minValue(1),
  v.maxValue(31_536_000),
);

/** Labels a worker must carry, each with the given value, to hold a route. */
export const WorkerSelectorSchema = LabelsSchema;

// Fields of a route's spec, shared by POST /routes and PUT /sessions/:session_id/routes.
const ROUTE_SPEC_ENTRIES = {
  service: ServiceSchema,
  backends: BackendListSchema,
  protocol: v.optional(RouteProtocolSchema, 'http'),
  mode: v.optional(RouteModeSchema, 'interactive'),
  worker_id: v.optional(UuidSchema),
  worker_selector: v.optional(WorkerSelectorSchema),
  port: v.optional(PortSchema),
  subdomain: v.optional(SubdomainSchema),
  open_to_public: v.optional(v.boolean(), false),
  allowed_client_ips: v.optional(CidrListSchema, []),
  labels: v.optional(LabelsSchema, {}),
  idle_timeout_s: v.optional(IdleTimeoutSchema),
};

interface AddressFields {
  protocol: string;
  port?: number;
  subdomain?: string;
}

const hasOneAddressKind = (body: AddressFields) =>
  body.port === undefined || body.subdomain === undefined;
const ONE_ADDRESS_KIND = 'give port (port mode) or subdomain (wildcard mode), not both';

const isTcpWithoutSubdomain = (body: AddressFields) =>
  body.protocol !== 'tcp' || body.subdomain === undefined;
const TCP_WITHOUT_SUBDOMAIN = 'tcp routes are served only in port mode, so they take no subdomain';

/** A route spec without its session: one item of PUT /sessions/:session_id/routes. */
export const SessionRouteSchema = v.pipe(
  v.strictObject(ROUTE_SPEC_ENTRIES),
  v.forward(v.check((body) => hasOneAddressKind(body), ONE_ADDRESS_KIND), ['subdomain']),
  v.forward(v.check((body) => isTcpWithoutSubdomain(body), TCP_WITHOUT_SUBDOMAIN), ['subdomain']),
);

export const CreateRouteBodySchema = v.pipe(
  v.strictObject({ session_id: SessionIdSchema, ...ROUTE_SPEC_ENTRIES }),
  v.forward(v.check((body) => hasOneAddressKind(body), ONE_ADDRESS_KIND), ['subdomain']),
  v.forward(v.check((body) => isTcpWithoutSubdomain(body), TCP_WITHOUT_SUBDOMAIN), ['subdomain']),
);
export type CreateRouteBody = v.InferOutput<typeof CreateRouteBodySchema>;

/** Most routes one session may declare in PUT /sessions/:session_id/routes. */
export const MAX_SESSION_ROUTES = 100;

export const SessionRoutesBodySchema = v.pipe(
  v.strictObject({
    routes: v.pipe(v.array(SessionRouteSchema), v.maxLength(MAX_SESSION_ROUTES)),
  }),
  v.forward(
    v.check(
      (body) => duplicateService(body.routes) === undefined,
      (issue) => {
        const { routes } = issue.input as { routes: Array<{ service: string }> };
        const service = duplicateService(routes);
        return `service ${service} appears more than once; a session has one route per service`;
      },
    ),
    ['routes'],
  ),
);
export type SessionRoutesBody = v.InferOutput<typeof SessionRoutesBodySchema>;
export type SessionRouteSpec = SessionRoutesBody['routes'][number];

function duplicateService(routes: Array<{ service: string }>): string | undefined {
  const seen = new Set<string>();
  for (const { service } of routes) {
    if (seen.has(service)) return service;
    seen.add(service);
  }
  return undefined;
}

export const PatchRouteBodySchema = v.strictObject({
  backends: v.optional(BackendListSchema),
  open_to_public: v.optional(v.boolean()),
  allowed_client_ips: v.optional(CidrListSchema),
  labels: v.optional(LabelsSchema),
  /** null removes the idle timeout. */
  idle_timeout_s: v.optional(v.nullable(IdleTimeoutSchema)),
});
export type PatchRouteBody = v.InferOutput<typeof PatchRouteBodySchema>;

const LimitSchema = v.pipe(
  v.string(),
  v.regex(/^\d{1,4}$/, 'must be an integer from 1 to 1000'),
  v.transform(Number),
  v.minValue(1),
  v.maxValue(1000),
);

const RevisionQuerySchema = v.pipe(
  v.string(),
  v.regex(/^\d{1,15}$/, 'must be a revision, an integer of 0 or more'),
  v.transform(Number),
);

export const DrainWorkerBodySchema = v.strictObject({
  /** Also move the worker's routes to other live workers now. */
  move: v.optional(v.boolean(), false),
});
export type DrainWorkerBody = v.InferOutput<typeof DrainWorkerBodySchema>;

export const ListRoutesQuerySchema = v.strictObject({
  session_id: v.optional(SessionIdSchema),
  worker_id: v.optional(UuidSchema),
  service: v.optional(ServiceSchema),
  limit: v.optional(LimitSchema),
  cursor: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9_-]{1,200}$/, 'invalid cursor'))),
});

export const ListEventsQuerySchema = v.strictObject({
  since: v.optional(RevisionQuerySchema),
  limit: v.optional(LimitSchema),
});

export const EventStreamQuerySchema = v.strictObject({
  since: v.optional(RevisionQuerySchema),
  session_id: v.optional(SessionIdSchema),
  worker_id: v.optional(UuidSchema),
});

export const LookupQuerySchema = v.pipe(
  v.strictObject({
    host: v.optional(v.pipe(v.string(), v.maxLength(260))),
    worker_id: v.optional(UuidSchema),
    port: v.optional(v.pipe(v.string(), v.regex(/^\d{1,5}$/), v.transform(Number), PortSchema)),
  }),
  v.check(
    (query) => query.host !== undefined || (query.worker_id !== undefined && query.port !== undefined),
    'give host, or worker_id and port',
  ),
);

export type RouteProtocol = v.InferOutput<typeof RouteProtocolSchema>;
export type RouteStatus = 'pending' | 'active' | 'unavailable';
export type WorkerStatus = 'alive' | 'lost' | 'draining' | 'deregistered';

export interface Backend {
  host: string;
  port: number;
  weight: number;
}

/** A route as the API returns it and as workers receive it. */
export interface Route {
  id: string;
  session_id: string;
  service: string;
  protocol: RouteProtocol;
  mode: 'interactive' | 'inference';
  backends: Backend[];
  worker_id: string;
  port: number | null;
  subdomain: string | null;
  url: string;
  open_to_public: boolean;
  allowed_client_ips: string[];
  labels: Record<string, string>;
  /** Present only when the route expires after this many idle seconds. */
  idle_timeout_s?: number;
  /** Present only when the route was created with a worker selector. */
  worker_selector?: Record<string, string>;
  status: RouteStatus;
  revision: number;
  created_at: string;
  updated_at: string;
}

export interface Nack {
  revision: number;
  reason: 'digest_mismatch' | 'rejected';
  error: string;
  at: string;
}

export interface WorkerInstance {
  instance_id: string;
  generation: number;
  connected: boolean;
  applied_revision: number;
  last_heartbeat_at: string | null;
}

export interface Worker {
  id: string;
  authority: string;
  frontend_mode: 'port' | 'wildcard';
  hostname: string;
  protocols: Array<'http' | 'tcp'>;
  port_range: [number, number] | null;
  wildcard_domain: string | null;
  advertised_port: number | null;
  capacity: number | null;
  labels: Record<string, string>;
  status: WorkerStatus;
  connected: boolean;
  generation: number;
  registered_at: string;
  last_heartbeat_at: string | null;
  route_count: number;
  target_revision: number;
  applied_revision: number;
  lag_revisions: number;
  lag_ms: number;
  last_ack_at: string | null;
  last_nack: Nack | null;
  instances: WorkerInstance[];
}

export interface RegisterWorkerResponse {
  worker: Worker;
  instance_id: string;
  session_token: string;
  generation: number;
  heartbeat_interval_ms: number;
  heartbeat_misses: number;
  epoch: string;
  revision: number;
  routes: Route[];
  routes_complete: boolean;
}

/** Response of PUT /sessions/:session_id/routes: counts of changes and the resulting routes. */
export interface SessionRoutesResponse {
  created: number;
  updated: number;
  deleted: number;
  routes: Route[];
}

/** Response of POST /workers/:id/drain. */
export interface DrainWorkerResponse {
  worker: Worker;
  /** Routes moved to other workers by this call. */
  moved: number;
  /** Routes still on the worker: none were asked to move, or no other worker had room. */
  remaining: number;
}
