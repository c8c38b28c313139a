import * as v from 'valibot';
import { EVENT_TYPES } from '../../proto/index.ts';

// Shapes of the REST responses, for the OpenAPI document. The types in proto/ stay the
// definition that the code uses. test/ops/openapi.test.ts checks at compile time that each schema
// here has exactly the type of its proto counterpart, and it validates real responses against them.

const Timestamp = v.pipe(v.string(), v.isoTimestamp());
const NullableTimestamp = v.nullable(Timestamp);
const Uuid = v.pipe(v.string(), v.uuid());
const Revision = v.pipe(v.number(), v.integer(), v.minValue(0));
const StringMap = v.record(v.string(), v.string());

export const BackendResponseSchema = v.strictObject({
  host: v.string(),
  port: v.pipe(v.number(), v.integer()),
  weight: v.number(),
});

export const RouteResponseSchema = v.strictObject({
  id: Uuid,
  session_id: v.string(),
  service: v.string(),
  protocol: v.picklist(['http', 'tcp', 'grpc', 'h2', 'preopen']),
  mode: v.picklist(['interactive', 'inference']),
  backends: v.array(BackendResponseSchema),
  worker_id: Uuid,
  port: v.nullable(v.pipe(v.number(), v.integer())),
  subdomain: v.nullable(v.string()),
  url: v.string(),
  open_to_public: v.boolean(),
  allowed_client_ips: v.array(v.string()),
  labels: StringMap,
  idle_timeout_s: v.optional(v.pipe(v.number(), v.integer())),
  worker_selector: v.optional(StringMap),
  status: v.picklist(['pending', 'active', 'unavailable']),
  revision: Revision,
  created_at: Timestamp,
  updated_at: Timestamp,
});

export const NackResponseSchema = v.strictObject({
  revision: Revision,
  reason: v.picklist(['digest_mismatch', 'rejected']),
  error: v.string(),
  at: Timestamp,
});

export const WorkerInstanceResponseSchema = v.strictObject({
  instance_id: v.string(),
  generation: v.pipe(v.number(), v.integer()),
  connected: v.boolean(),
  applied_revision: Revision,
  last_heartbeat_at: NullableTimestamp,
});

const WorkerStatusSchema = v.picklist(['alive', 'lost', 'draining', 'deregistered']);

export const WorkerResponseSchema = v.strictObject({
  id: Uuid,
  authority: v.string(),
  frontend_mode: v.picklist(['port', 'wildcard']),
  hostname: v.string(),
  protocols: v.array(v.picklist(['http', 'tcp'])),
  port_range: v.nullable(v.tuple([v.number(), v.number()])),
  wildcard_domain: v.nullable(v.string()),
  advertised_port: v.nullable(v.number()),
  capacity: v.nullable(v.number()),
  labels: StringMap,
  status: WorkerStatusSchema,
  connected: v.boolean(),
  generation: v.pipe(v.number(), v.integer()),
  registered_at: Timestamp,
  last_heartbeat_at: NullableTimestamp,
  route_count: v.pipe(v.number(), v.integer()),
  target_revision: Revision,
  applied_revision: Revision,
  lag_revisions: v.pipe(v.number(), v.integer()),
  lag_ms: v.number(),
  last_ack_at: NullableTimestamp,
  last_nack: v.nullable(NackResponseSchema),
  instances: v.array(WorkerInstanceResponseSchema),
});

export const RegisterWorkerResponseSchema = v.strictObject({
  worker: WorkerResponseSchema,
  instance_id: v.string(),
  session_token: v.string(),
  generation: v.pipe(v.number(), v.integer()),
  heartbeat_interval_ms: v.number(),
  heartbeat_misses: v.number(),
  epoch: Uuid,
  revision: Revision,
  routes: v.array(RouteResponseSchema),
  routes_complete: v.boolean(),
});

export const SessionRoutesResponseSchema = v.strictObject({
  created: v.number(),
  updated: v.number(),
  deleted: v.number(),
  routes: v.array(RouteResponseSchema),
});

export const DrainWorkerResponseSchema = v.strictObject({
  worker: WorkerResponseSchema,
  moved: v.number(),
  remaining: v.number(),
});

export const RouteEventResponseSchema = v.strictObject({
  revision: Revision,
  type: v.picklist(EVENT_TYPES),
  at: Timestamp,
  route: v.optional(RouteResponseSchema),
  worker: v.optional(
    v.strictObject({
      id: Uuid,
      authority: v.string(),
      status: WorkerStatusSchema,
      generation: v.number(),
      instance_id: v.optional(v.string()),
    }),
  ),
  previous: v.optional(
    v.strictObject({
      worker_id: Uuid,
      port: v.optional(v.number()),
      subdomain: v.optional(v.string()),
      url: v.string(),
    }),
  ),
  reason: v.optional(v.string()),
});

export const HealthResponseSchema = v.strictObject({
  status: v.picklist(['ok', 'unavailable']),
  db: v.picklist(['up', 'down']),
  epoch: v.optional(Uuid),
  revision: v.optional(Revision),
  workers: v.optional(v.strictObject({ alive: v.number(), lost: v.number() })),
});

export const ProblemResponseSchema = v.strictObject({
  type: v.string(),
  title: v.string(),
  status: v.pipe(v.number(), v.integer()),
  detail: v.string(),
  request_id: v.string(),
  issues: v.optional(
    v.array(
      v.strictObject({
        path: v.string(),
        message: v.string(),
        expected: v.optional(v.string()),
        received: v.optional(v.string()),
      }),
    ),
  ),
  conflicting_route_id: v.optional(Uuid),
  oldest_revision: v.optional(Revision),
});

export const RouteListResponseSchema = v.strictObject({
  routes: v.array(RouteResponseSchema),
  next_cursor: v.nullable(v.string()),
});

export const WorkerListResponseSchema = v.strictObject({ workers: v.array(WorkerResponseSchema) });

export const SessionRouteListResponseSchema = v.strictObject({
  routes: v.array(RouteResponseSchema),
});

export const DeletedCountResponseSchema = v.strictObject({ deleted: v.number() });

export const EventListResponseSchema = v.strictObject({
  events: v.array(RouteEventResponseSchema),
  revision: Revision,
});

/** Schemas that the document defines once under `components.schemas` and refers to by name. */
export const NAMED_RESPONSE_SCHEMAS = {
  Route: RouteResponseSchema,
  Backend: BackendResponseSchema,
  Worker: WorkerResponseSchema,
  WorkerInstance: WorkerInstanceResponseSchema,
  Nack: NackResponseSchema,
  RouteEvent: RouteEventResponseSchema,
  Problem: ProblemResponseSchema,
};
