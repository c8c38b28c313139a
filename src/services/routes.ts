import { randomUUID } from 'node:crypto';
import type {
  Backend,
  CreateRouteBody,
  PatchRouteBody,
  Route,
  RouteProtocol,
} from '../../proto/index.ts';
import {
  BadRequestError,
  ConflictError,
  NoWorkerError,
  NotFoundError,
  PreconditionFailedError,
} from '../errors.ts';
import type { Queryable, Sql } from '../store/database.ts';
import * as store from '../store/routes.ts';
import { placementCandidates, type Candidate } from '../store/workers.ts';
import type { WriteTx, Writer } from '../store/writer.ts';
import {
  generatedSubdomain,
  hasCapacity,
  routeUrl,
  servesProtocol,
  withRandomSuffix,
} from './placement.ts';

/** A placement request: the route and the constraints its worker must meet. */
export interface PlacementRequest {
  protocol: RouteProtocol;
  service: string;
  sessionId: string;
  workerId?: string;
  port?: number;
  subdomain?: string;
  /** Only workers of this mode; failover keeps a route's mode. */
  frontendMode?: 'port' | 'wildcard';
  /** A worker that must not take the route: the one it fails over from. */
  excludeWorkerId?: string;
}

export interface Placement {
  worker: Candidate;
  port: number | null;
  subdomain: string | null;
  url: string;
}

const GENERATED_NAME_ATTEMPTS = 5;

/** Creates, changes and deletes routes; every write goes through the writer. */
export class RouteService {
  readonly #sql: Sql;
  readonly #writer: Writer;

  constructor(sql: Sql, writer: Writer) {
    this.#sql = sql;
    this.#writer = writer;
  }

  get(id: string): Promise<Route | null> {
    return store.findRoute(this.#sql, id);
  }

  list(filter: store.RouteFilter, limit: number, afterId?: string): Promise<Route[]> {
    return store.listRoutes(this.#sql, filter, limit, afterId);
  }

  sessionRoutes(sessionId: string): Promise<Route[]> {
    return store.sessionRoutes(this.#sql, sessionId);
  }

  /**
   * Finds the route served at a wildcard host such as `jupyter-s1.apps.example.test`
   * (any case, with or without `:port`), only among `workerId`'s routes when given.
   */
  findByHost(host: string, workerId?: string): Promise<Route | null> {
    // NOTE: registration stores a wildcard domain in the case given, and the
    // comparison here is exact, so only lower-case wildcard domains are found.
    const name = host.toLowerCase().replace(/:\d{1,5}$/, '').replace(/\.$/, '');
    const dot = name.indexOf('.');
    if (dot <= 0) return Promise.resolve(null);
    return store.findRouteByHost(this.#sql, name.slice(0, dot), name.slice(dot), workerId);
  }

  /** Finds the route a port-mode worker serves on `port`. */
  findByPort(workerId: string, port: number): Promise<Route | null> {
    return store.findRouteByPort(this.#sql, workerId, port);
  }

  /**
   * Creates a route, or returns the existing one when the session already has
   * this service with the same spec.
   */
  create(body: CreateRouteBody): Promise<{ route: Route; isCreated: boolean }> {
    return this.#writer.run(async (tx) => {
      const existing = await store.findRouteBySessionService(tx.sql, body.session_id, body.service);
      if (existing) return { route: matchExisting(existing, body), isCreated: false };

      const placement = await placeRoute(tx.sql, {
        protocol: body.protocol,
        service: body.service,
        sessionId: body.session_id,
        workerId: body.worker_id,
        port: body.port,
        subdomain: body.subdomain?.toLowerCase(),
      });
      const route = newRoute(body, placement, tx);
      await store.insertRoute(tx.sql, route);
      tx.record({
        type: 'route.created',
        route_id: route.id,
        session_id: route.session_id,
        worker_id: route.worker_id,
        route,
      });
      return { route, isCreated: true };
    });
  }

  /** Replaces the given fields; a change that alters nothing takes no revision. */
  patch(id: string, body: PatchRouteBody, ifMatch?: number): Promise<Route> {
    return this.#writer.run(async (tx) => {
      const route = await loadForWrite(tx, id, ifMatch);
      const next: Route = { ...route, ...definedFields(body) };
      if (sameSpec(route, next)) return route;

      next.revision = tx.nextRevision();
      next.status = 'pending';
      next.updated_at = tx.now.toISOString();
      await store.updateRoute(tx.sql, next);
      tx.record({
        type: 'route.updated',
        route_id: id,
        session_id: next.session_id,
        worker_id: next.worker_id,
        prev_worker_id: route.worker_id,
        prev_revision: route.revision,
        route: next,
      });
      return next;
    });
  }

  remove(id: string, ifMatch?: number): Promise<void> {
    return this.#writer.run(async (tx) => {
      await loadForWrite(tx, id, ifMatch);
      const route = await store.deleteRoute(tx.sql, id);
      if (route) recordDeleted(tx, route, 'api');
    });
  }

  /** Deletes every route of a session, whatever its status, when the session ends. */
  removeSession(sessionId: string): Promise<number> {
    return this.#writer.run(async (tx) => {
      const routes = await store.deleteSessionRoutes(tx.sql, sessionId);
      for (const route of routes) recordDeleted(tx, route, 'session_ended');
      return routes.length;
    });
  }
}

async function loadForWrite(tx: WriteTx, id: string, ifMatch?: number): Promise<Route> {
  const route = await store.findRoute(tx.sql, id);
  if (!route) throw new NotFoundError(`Route ${id} not found.`);
  if (ifMatch !== undefined && ifMatch !== route.revision) {
    throw new PreconditionFailedError(
      `Route ${id} is at revision ${route.revision}, not ${ifMatch}; read it again and retry.`,
    );
  }
  return route;
}

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

function newRoute(body: CreateRouteBody, placement: Placement, tx: WriteTx): Route {
  const now = tx.now.toISOString();
  return {
    id: randomUUID(),
    session_id: body.session_id,
    service: body.service,
    protocol: body.protocol,
    mode: body.mode,
    backends: body.backends.map((b) => ({ host: b.host, port: b.port, weight: b.weight })),
    worker_id: placement.worker.id,
    port: placement.port,
    subdomain: placement.subdomain,
    url: placement.url,
    open_to_public: body.open_to_public,
    allowed_client_ips: body.allowed_client_ips,
    labels: body.labels,
    status: 'pending',
    revision: tx.nextRevision(),
    created_at: now,
    updated_at: now,
  };
}

function definedFields(body: PatchRouteBody): Partial<Route> {
  return Object.fromEntries(Object.entries(body).filter(([, value]) => value !== undefined));
}

function matchExisting(existing: Route, body: CreateRouteBody): Route {
  const isSame =
    sameSpec(existing, body) &&
    (body.worker_id === undefined || body.worker_id === existing.worker_id) &&
    (body.port === undefined || body.port === existing.port) &&
    (body.subdomain === undefined || body.subdomain.toLowerCase() === existing.subdomain);
  if (isSame) return existing;
  throw new ConflictError(
    `Session ${existing.session_id} already has a ${existing.service} route with another spec; ` +
      `change it with PATCH /routes/${existing.id} or delete it first.`,
    existing.id,
  );
}

type Spec = Pick<Route, 'open_to_public' | 'allowed_client_ips' | 'labels'> & {
  backends: Array<Pick<Backend, 'host' | 'port'> & { weight?: number }>;
  protocol?: string;
  mode?: string;
};

/** Compares specs after defaults, treating backends and client ranges as unordered. */
export function sameSpec(a: Spec, b: Spec): boolean {
  return (
    (a.protocol ?? 'http') === (b.protocol ?? 'http') &&
    (a.mode ?? 'interactive') === (b.mode ?? 'interactive') &&
    a.open_to_public === b.open_to_public &&
    canonical(a.backends.map(backendKey)) === canonical(b.backends.map(backendKey)) &&
    canonical(a.allowed_client_ips) === canonical(b.allowed_client_ips) &&
    JSON.stringify(sortKeys(a.labels)) === JSON.stringify(sortKeys(b.labels))
  );
}

function backendKey(backend: Spec['backends'][number]): string {
  return `${backend.host.toLowerCase()}|${backend.port}|${backend.weight ?? 1}`;
}

function canonical(values: string[]): string {
  return JSON.stringify([...values].sort());
}

function sortKeys(labels: Record<string, string>): Array<[string, string]> {
  return Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

/**
 * Chooses a worker and an address for a route, least loaded worker first.
 * Runs inside the write transaction, so no other writer races it.
 */
export async function placeRoute(q: Queryable, request: PlacementRequest): Promise<Placement> {
  const candidates = await eligibleWorkers(q, request);
  if (request.port !== undefined) return placeOnPort(q, candidates, request, request.port);
  if (request.subdomain !== undefined) {
    return placeOnSubdomain(q, candidates, request, request.subdomain);
  }
  for (const worker of candidates) {
    const placement = await placeAnywhere(q, worker, request);
    if (placement) return placement;
  }
  throw new NoWorkerError(
    `All ${candidates.length} live workers that serve ${request.protocol} are full ` +
      '(capacity or port range); register another worker or free routes.',
  );
}

async function eligibleWorkers(q: Queryable, request: PlacementRequest): Promise<Candidate[]> {
  const all = await placementCandidates(q, request.protocol, request.excludeWorkerId);
  const eligible = all.filter(
    (worker) =>
      servesProtocol(worker, request.protocol) &&
      hasCapacity(worker) &&
      (request.frontendMode === undefined || worker.frontend_mode === request.frontendMode) &&
      (request.workerId === undefined || worker.id === request.workerId),
  );
  if (eligible.length > 0) return eligible;
  throw new NoWorkerError(await explainNoWorker(q, request, all));
}

async function explainNoWorker(
  q: Queryable,
  request: PlacementRequest,
  alive: Candidate[],
): Promise<string> {
  if (request.workerId === undefined) {
    return `No live worker serves protocol ${request.protocol} with room for another route.`;
  }
  const pinned = alive.find((worker) => worker.id === request.workerId);
  if (pinned) {
    return `Worker ${pinned.authority} cannot take this route: it is full or does not serve ` +
      `protocol ${request.protocol} in ${pinned.frontend_mode} mode.`;
  }
  const [row] = await q`SELECT authority, status FROM workers WHERE id = ${request.workerId}`;
  if (!row) throw new BadRequestError(`worker_id ${request.workerId} names no registered worker.`);
  return `Worker ${row.authority} is ${row.status}; it takes no new routes.`;
}

async function placeOnPort(
  q: Queryable,
  candidates: Candidate[],
  request: PlacementRequest,
  port: number,
): Promise<Placement> {
  const inRange = candidates.filter(
    (w) => w.port_range !== null && port >= w.port_range[0] && port <= w.port_range[1],
  );
  if (inRange.length === 0) {
    throw new NoWorkerError(`No eligible port-mode worker has port ${port} in its port range.`);
  }
  let takenBy: string | null = null;
  for (const worker of inRange) {
    takenBy = await store.routeIdAtPort(q, worker.id, port);
    if (takenBy === null) return placed(worker, request.protocol, port, null);
  }
  throw new ConflictError(`Port ${port} is taken on every eligible worker.`, takenBy ?? undefined);
}

async function placeOnSubdomain(
  q: Queryable,
  candidates: Candidate[],
  request: PlacementRequest,
  subdomain: string,
): Promise<Placement> {
  const wildcard = candidates.filter((worker) => worker.frontend_mode === 'wildcard');
  if (wildcard.length === 0) {
    throw new NoWorkerError('No eligible wildcard-mode worker can serve a requested subdomain.');
  }
  let takenBy: string | null = null;
  for (const worker of wildcard) {
    takenBy = await store.routeIdAtSubdomain(q, worker.id, subdomain);
    if (takenBy === null) return placed(worker, request.protocol, null, subdomain);
  }
  throw new ConflictError(
    `Subdomain ${subdomain} is taken on every eligible worker.`,
    takenBy ?? undefined,
  );
}

async function placeAnywhere(
  q: Queryable,
  worker: Candidate,
  request: PlacementRequest,
): Promise<Placement | null> {
  if (worker.frontend_mode === 'port') {
    const [first, last] = worker.port_range ?? [0, -1];
    const port = await store.lowestFreePort(q, worker.id, first, last);
    return port === null ? null : placed(worker, request.protocol, port, null);
  }
  let subdomain = generatedSubdomain(request.service, request.sessionId);
  for (let attempt = 0; attempt < GENERATED_NAME_ATTEMPTS; attempt++) {
    if ((await store.routeIdAtSubdomain(q, worker.id, subdomain)) === null) {
      return placed(worker, request.protocol, null, subdomain);
    }
    subdomain = withRandomSuffix(generatedSubdomain(request.service, request.sessionId));
  }
  return null;
}

function placed(
  worker: Candidate,
  protocol: RouteProtocol,
  port: number | null,
  subdomain: string | null,
): Placement {
  return { worker, port, subdomain, url: routeUrl(worker, protocol, { port, subdomain }) };
}
