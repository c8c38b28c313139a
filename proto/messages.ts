import * as v from 'valibot';
import type { Route } from './rest.ts';

// Messages of the worker session on `GET /workers/stream`. Each is one JSON
// text frame with a `type`.

export const PROTOCOL_VERSION = 1;

/** Largest frame either side sends or accepts, in bytes. */
export const MAX_MESSAGE_BYTES = 1024 * 1024;

/** WebSocket close codes of the worker session and the event stream. */
export const CloseCode = {
  goingAway: 1001,
  restarting: 1012,
  lost: 4000,
  malformed: 4400,
  unauthorized: 4401,
  deregistered: 4404,
  helloTimeout: 4408,
  superseded: 4409,
  eventsCompacted: 4410,
  tooSlow: 4429,
} as const;

const RevisionSchema = v.pipe(v.number(), v.integer(), v.minValue(0));
const DigestSchema = v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/, 'must be 32 lower-case hex digits'));

export const HelloSchema = v.object({
  type: v.literal('hello'),
  protocol_version: v.literal(PROTOCOL_VERSION),
  epoch: v.optional(v.pipe(v.string(), v.maxLength(64))),
  applied_revision: v.optional(RevisionSchema),
  digest: v.optional(DigestSchema),
});

export const AckSchema = v.object({
  type: v.literal('ack'),
  revision: RevisionSchema,
  digest: DigestSchema,
});

export const NackSchema = v.object({
  type: v.literal('nack'),
  revision: RevisionSchema,
  reason: v.picklist(['digest_mismatch', 'rejected']),
  error: v.pipe(v.string(), v.maxLength(1000)),
});

export const HeartbeatSchema = v.object({
  type: v.literal('heartbeat'),
  sent_at: v.pipe(v.string(), v.isoTimestamp()),
  applied_revision: RevisionSchema,
  stats: v.object({
    routes: v.optional(
      v.pipe(
        v.array(
          v.object({
            id: v.pipe(v.string(), v.uuid()),
            last_activity_at: v.pipe(v.string(), v.isoTimestamp()),
          }),
        ),
        v.maxLength(100_000),
      ),
    ),
    connections: v.optional(v.pipe(v.number(), v.integer(), v.minValue(0))),
  }),
});

/** Any message a worker may send. */
export const WorkerMessageSchema = v.variant('type', [
  HelloSchema,
  AckSchema,
  NackSchema,
  HeartbeatSchema,
]);

export type Hello = v.InferOutput<typeof HelloSchema>;
export type Ack = v.InferOutput<typeof AckSchema>;
export type NackMessage = v.InferOutput<typeof NackSchema>;
export type Heartbeat = v.InferOutput<typeof HeartbeatSchema>;
export type WorkerMessage = v.InferOutput<typeof WorkerMessageSchema>;

export interface SnapshotMessage {
  type: 'snapshot';
  epoch: string;
  revision: number;
  routes: Route[];
  digest: string;
  more?: boolean;
}

export interface DiffMessage {
  type: 'diff';
  epoch: string;
  from_revision: number;
  revision: number;
  upserts: Route[];
  removes: string[];
  digest: string;
}

export interface ErrorMessage {
  type: 'error';
  code: string;
  message: string;
}

export type CoordinatorMessage = SnapshotMessage | DiffMessage | ErrorMessage;

const WireBackendSchema = v.object({
  host: v.string(),
  port: v.number(),
  weight: v.optional(v.number(), 1),
});

/** A route as a worker reads it; unknown fields pass, so newer coordinators stay readable. */
export const WireRouteSchema = v.looseObject({
  id: v.string(),
  session_id: v.string(),
  service: v.string(),
  protocol: v.string(),
  backends: v.array(WireBackendSchema),
  worker_id: v.string(),
  port: v.nullable(v.number()),
  subdomain: v.nullable(v.string()),
  url: v.string(),
  open_to_public: v.boolean(),
  allowed_client_ips: v.array(v.string()),
  revision: RevisionSchema,
});

/** Any message the coordinator may send, as a worker validates it. */
export const CoordinatorMessageSchema = v.variant('type', [
  v.object({
    type: v.literal('snapshot'),
    epoch: v.string(),
    revision: RevisionSchema,
    routes: v.array(WireRouteSchema),
    digest: DigestSchema,
    more: v.optional(v.boolean()),
  }),
  v.object({
    type: v.literal('diff'),
    epoch: v.string(),
    from_revision: RevisionSchema,
    revision: RevisionSchema,
    upserts: v.array(WireRouteSchema),
    removes: v.array(v.string()),
    digest: DigestSchema,
  }),
  v.object({ type: v.literal('error'), code: v.string(), message: v.string() }),
]);
