import type {
  Backend,
  PreviousPlacement,
  Route,
  SessionRouteSpec,
} from '../../proto/index.ts';
import { BadRequestError, ConflictError, NoWorkerError, type AppError } from '../errors.ts';
import type { Queryable } from '../store/database.ts';
import * as routeStore from '../store/routes.ts';
import type { Candidate } from '../store/workers.ts';
import type { WriteTx } from '../store/writer.ts';
import { explainNoWorker, findMismatch, type Placement, type PlacementRequest } from './placement.ts';

// Building, comparing and recording route changes: shared by route writes,
// session changes and moves.

/** The spec fields of a route body, with or without its session id. */
export type RouteSpecBody = SessionRouteSpec;

export function recordDeleted(tx: WriteTx, route: Route, reason: string): void {
  tx.record({
    type: 'route.deleted',
    route_id: route.id,
    session_id: route.session_id,
    prev_worker_id: route.worker_id,
    prev_revision: route.revision,
    route,
    reason,
  });
}

export function recordCreated(tx: WriteTx, route: Route): void {
  tx.record({
    type: 'route.created',
    route_id: route.id,
    session_id: route.session_id,
    worker_id: route.worker_id,
    route,
  });
}

/** Records a change of `before` into `after`, which already carries its new revision. */
export function recordUpdated(tx: WriteTx, before: Route, after: Route): void {
  tx.record({
    type: 'route.updated',
    route_id: after.id,
    session_id: after.session_id,
    worker_id: after.worker_id,
    prev_worker_id: before.worker_id,
    prev_revision: before.revision,
    route: after,
  });
}

/** Gives a changed route the next revision, `pending` status and the change time. */
export function stampChange(route: Route, tx: WriteTx): Route {
  route.revision = tx.nextRevision();
  route.status = 'pending';
  route.updated_at = tx.now.toISOString();
  return route;
}

/** Builds the placement request of a route body. */
export function placementRequest(
  body: RouteSpecBody,
  sessionId: string,
): PlacementRequest {
  return {
    protocol: body.protocol,
    service: body.service,
    sessionId,
    workerId: body.worker_id?.toLowerCase(),
    selector: selectorOf(body.worker_selector),
    port: body.port,
    subdomain: body.subdomain?.toLowerCase(),
  };
}

/** Returns the selector, or undefined for an empty one: both select every worker. */
export function selectorOf(selector: Record<string, string> | undefined) {
  return selector && Object.keys(selector).length > 0 ? selector : undefined;
}

export interface NewRouteOptions extends RouteSpecBody {
  id: string;
  session_id: string;
  placement: Placement;
  tx: WriteTx;
}

/** Builds a new route at the next revision. */
export function newRoute(options: NewRouteOptions): Route {
  const { placement, tx } = options;
  const now = tx.now.toISOString();
  const route: Route = {
    id: options.id,
    session_id: options.session_id,
    service: options.service,
    protocol: options.protocol,
    mode: options.mode,
    backends: options.backends.map((b) => ({ host: b.host, port: b.port, weight: b.weight })),
    worker_id: placement.worker.id,
    port: placement.port,
    subdomain: placement.subdomain,
    url: placement.url,
    open_to_public: options.open_to_public,
    allowed_client_ips: options.allowed_client_ips,
    labels: options.labels,
    status: 'pending',
    revision: tx.nextRevision(),
    created_at: now,
    updated_at: now,
  };
  if (options.idle_timeout_s !== undefined) route.idle_timeout_s = options.idle_timeout_s;
  const selector = selectorOf(options.worker_selector);
  if (selector !== undefined) route.worker_selector = selector;
  return route;
}

/** Records a move of `before` to the placement in `after`, which carries its new revision. */
export function recordMoved(tx: WriteTx, before: Route, after: Route): void {
  tx.record({
    type: 'route.moved',
    route_id: after.id,
    session_id: after.session_id,
    worker_id: after.worker_id,
    prev_worker_id: before.worker_id,
    prev_revision: before.revision,
    route: after,
    previous: previousPlacement(before),
  });
}

/** Returns where a route was served before a move, as `route.moved` events carry it. */
export function previousPlacement(route: Route): PreviousPlacement {
  const previous: PreviousPlacement = { worker_id: route.worker_id, url: route.url };
  if (route.port !== null) previous.port = route.port;
  if (route.subdomain !== null) previous.subdomain = route.subdomain;
  return previous;
}

/** Returns whether a route is at the worker, port and subdomain a request gives, if any. */
export function isAtRequestedAddress(route: Route, body: RouteSpecBody): boolean {
  return (
    (body.worker_id === undefined || body.worker_id.toLowerCase() === route.worker_id) &&
    (body.port === undefined || body.port === route.port) &&
    (body.subdomain === undefined || body.subdomain.toLowerCase() === route.subdomain)
  );
}

type Spec = Pick<Route, 'open_to_public' | 'allowed_client_ips' | 'labels'> & {
  backends: Array<Pick<Backend, 'host' | 'port'> & { weight?: number }>;
  protocol?: string;
  mode?: string;
  idle_timeout_s?: number | null;
};

/** Compares specs after defaults, treating backends and client ranges as unordered. */
export function sameSpec(a: Spec, b: Spec): boolean {
  return (
    (a.protocol ?? 'http') === (b.protocol ?? 'http') &&
    (a.mode ?? 'interactive') === (b.mode ?? 'interactive') &&
    a.open_to_public === b.open_to_public &&
    (a.idle_timeout_s ?? null) === (b.idle_timeout_s ?? null) &&
    canonical(a.backends.map(backendKey)) === canonical(b.backends.map(backendKey)) &&
    canonical(a.allowed_client_ips) === canonical(b.allowed_client_ips) &&
    sameLabels(a.labels, b.labels)
  );
}

export function sameLabels(a: Record<string, string>, b: Record<string, string>): boolean {
  return JSON.stringify(sortKeys(a)) === JSON.stringify(sortKeys(b));
}

function backendKey(backend: Spec['backends'][number]): string {
  return `${backend.host.toLowerCase()}|${backend.port}|${backend.weight ?? 1}`;
}

function canonical(values: string[]): string {
  return JSON.stringify([...values].sort());
}

function sortKeys(labels: Record<string, string>): Array<[string, string]> {
  return Object.entries(labels).sort(([a], [b]) => compareText(a, b));
}

function compareText(a: string, b: string): number {
  if (a === b) return 0;
  return a < b ? -1 : 1;
}

/**
 * Returns the id of the route at the port or subdomain a request names, on a
 * worker that would take the route but is full, so a request that lost a race
 * for an address learns which route won. Returns null when the request names
 * no address or the address is free.
 */
async function routeAtRequestedAddress(
  q: Queryable,
  alive: Candidate[],
  request: PlacementRequest,
): Promise<string | null> {
  if (request.port === undefined && request.subdomain === undefined) return null;
  const full = alive.filter((worker) => findMismatch(worker, request) === 'full');
  for (const worker of full) {
    const holderId = request.port === undefined
      ? await routeStore.routeIdAtSubdomain(q, worker.id, request.subdomain as string)
      : await routeStore.routeIdAtPort(q, worker.id, request.port);
    if (holderId !== null) return holderId;
  }
  return null;
}

/**
 * Builds the error for a route no live worker can take. A port or subdomain
 * taken on a worker that is otherwise eligible but full is a 409 naming the
 * route holding it. A `worker_id` naming no worker is a 400; one naming a
 * worker that is not alive, or one that does not fit, is a 503 that explains why.
 */
export async function noWorkerError(
  q: Queryable,
  alive: Candidate[],
  request: PlacementRequest,
): Promise<AppError> {
  const isPinnedAlive = alive.some((worker) => worker.id === request.workerId);
  const holderId = await routeAtRequestedAddress(q, alive, request);
  if (holderId !== null) {
    return new ConflictError(`The requested address is taken by route ${holderId}.`, holderId);
  }
  if (request.workerId === undefined || isPinnedAlive) {
    return new NoWorkerError(explainNoWorker(alive, request));
  }
  const [row] = await q`SELECT authority, status FROM workers WHERE id = ${request.workerId}`;
  if (!row) return new BadRequestError(`worker_id ${request.workerId} names no registered worker.`);
  return new NoWorkerError(`Worker ${row.authority} is ${row.status}; it takes no new routes.`);
}
