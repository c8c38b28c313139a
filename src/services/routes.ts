import { randomUUID } from 'node:crypto';
import type {
  CreateRouteBody,
  PatchRouteBody,
  Route,
  SessionRouteSpec,
  SessionRoutesResponse,
} from '../../proto/index.ts';
import { ConflictError, NoWorkerError, NotFoundError, PreconditionFailedError } from '../errors.ts';
import type { Queryable, Sql } from '../store/database.ts';
import * as store from '../store/routes.ts';
import { placementCandidates, type Candidate } from '../store/workers.ts';
import type { WriteTx, Writer } from '../store/writer.ts';
import {
  eligibleWorkers,
  placementAt,
  subdomainChoices,
  type Placement,
  type PlacementRequest,
} from './placement.ts';
import {
  isAtRequestedAddress,
  newRoute,
  noWorkerError,
  placementRequest,
  recordCreated,
  recordDeleted,
  recordUpdated,
  sameLabels,
  sameSpec,
  selectorOf,
  stampChange,
} from './route-changes.ts';
import { CreateBatcher } from './route-creates.ts';
import { replaceSessionRoutes } from './session-routes.ts';

export type { Placement, PlacementRequest } from './placement.ts';

/** Routes deleted for idleness by one write transaction. */
const EXPIRY_BATCH = 500;

/** Creates, changes and deletes routes; every write goes through the writer. */
export class RouteService {
  readonly #sql: Sql;
  readonly #writer: Writer;
  readonly #creates: CreateBatcher;

  constructor(sql: Sql, writer: Writer) {
    this.#sql = sql;
    this.#writer = writer;
    this.#creates = new CreateBatcher(writer, matchExisting, (tx, body) => this.#createOne(tx, body));
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
    // Registration stores wildcard domains in lower case, so the lower-cased host matches.
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
    return this.#creates.create(body);
  }

  /** Creates one route with per-route queries, as a write job. */
  async #createOne(tx: WriteTx, body: CreateRouteBody): Promise<{ route: Route; isCreated: boolean }> {
    const request = placementRequest(body, body.session_id);
    // The reads go out together: the driver pipelines them on the transaction's connection.
    const firstSubdomain = request.port === undefined
      ? (request.subdomain ?? subdomainChoices(request).next().value)
      : undefined;
    const [existing, workers, taken] = await Promise.all([
      store.findRouteBySessionService(tx.sql, body.session_id, body.service),
      placementCandidates(tx.sql),
      firstSubdomain === undefined ? undefined : store.routeIdsAtSubdomain(tx.sql, firstSubdomain),
    ]);
    if (existing) return { route: matchExisting(existing, body), isCreated: false };

    const readAhead = taken && { subdomain: firstSubdomain as string, routeIds: taken };
    const placement = await placeRoute(tx.sql, request, workers, readAhead);
    const route = newRoute({ ...body, id: randomUUID(), placement, tx });
    tx.send(store.insertRoute(tx.sql, route));
    recordCreated(tx, route);
    return { route, isCreated: true };
  }

  /** Replaces the given fields; a change that alters nothing takes no revision. */
  patch(id: string, body: PatchRouteBody, ifMatch?: number): Promise<Route> {
    return this.#writer.run(async (tx) => {
      const route = await loadForWrite(tx, id, ifMatch);
      const next = patched(route, body);
      if (sameSpec(route, next)) return route;

      await store.updateRoute(tx.sql, stampChange(next, tx));
      recordUpdated(tx, route, next);
      return next;
    });
  }

  /** Deletes a route; returns the worker it was on and the revision of the deletion. */
  remove(id: string, ifMatch?: number): Promise<{ workerId: string; revision: number } | null> {
    return this.#writer.run(async (tx) => {
      await loadForWrite(tx, id, ifMatch);
      const route = await store.deleteRoute(tx.sql, id);
      if (!route) return null;
      recordDeleted(tx, route, 'api');
      return { workerId: route.worker_id, revision: tx.revision };
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

  /**
   * Makes a session's routes exactly `specs`, one route per service, in one
   * transaction: missing ones are created, changed ones updated (or replaced
   * when protocol, mode or placement must change), the rest deleted.
   */
  replaceSession(sessionId: string, specs: SessionRouteSpec[]): Promise<SessionRoutesResponse> {
    return this.#writer.run((tx) => replaceSessionRoutes(tx, sessionId, specs));
  }

  /**
   * Deletes routes idle longer than their `idle_timeout_s`, in batches, each
   * with a `route.deleted` event of reason `idle`.
   *
   * @returns the routes deleted.
   */
  async expireIdle(): Promise<Route[]> {
    // A read first, so sweeps with nothing to expire take no write lock.
    if (!(await store.hasIdleRoutes(this.#sql, new Date()))) return [];
    const expired: Route[] = [];
    for (;;) {
      const batch = await this.#writer.run(async (tx) => {
        const routes = await store.deleteIdleRoutes(tx.sql, tx.now, EXPIRY_BATCH);
        for (const route of routes) recordDeleted(tx, route, 'idle');
        return routes;
      });
      expired.push(...batch);
      if (batch.length < EXPIRY_BATCH) return expired;
    }
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

/** Returns `route` with the given fields of a PATCH body; `idle_timeout_s: null` removes it. */
function patched(route: Route, body: PatchRouteBody): Route {
  const { idle_timeout_s: idleTimeoutS, ...fields } = body;
  const next: Route = { ...route };
  for (const [key, value] of Object.entries(fields)) {
    if (value !== undefined) Object.assign(next, { [key]: value });
  }
  if (idleTimeoutS === null) delete next.idle_timeout_s;
  else if (idleTimeoutS !== undefined) next.idle_timeout_s = idleTimeoutS;
  return next;
}

/**
 * Returns the existing route when a create repeats it: the same spec, and the
 * same placement fields where the request gives them. Anything else conflicts.
 */
function matchExisting(existing: Route, body: CreateRouteBody): Route {
  const selector = selectorOf(body.worker_selector);
  const isSame =
    sameSpec(existing, body) &&
    isAtRequestedAddress(existing, body) &&
    (selector === undefined || sameLabels(selector, existing.worker_selector ?? {}));
  if (isSame) return existing;
  throw new ConflictError(
    `Session ${existing.session_id} already has a ${existing.service} route with another spec; ` +
      `change it with PATCH /routes/${existing.id} or delete it first.`,
    existing.id,
  );
}

/** The routes at one subdomain on every alive worker, read in this transaction. */
interface SubdomainReadAhead {
  subdomain: string;
  routeIds: Map<string, string>;
}

/** Returns the id of the route at `subdomain` on a worker, from the read-ahead when it has it. */
function routeAtSubdomain(
  q: Queryable,
  workerId: string,
  subdomain: string,
  readAhead?: SubdomainReadAhead,
): Promise<string | null> {
  if (readAhead?.subdomain === subdomain) return Promise.resolve(readAhead.routeIds.get(workerId) ?? null);
  return store.routeIdAtSubdomain(q, workerId, subdomain);
}

/**
 * Chooses a worker and an address for one route, least loaded worker first.
 * Runs inside the write transaction, so no other writer races it. `loaded` is
 * the candidate list when the caller has already read it in this transaction,
 * and `readAhead` the routes at the first subdomain it would try.
 */
export async function placeRoute(
  q: Queryable,
  request: PlacementRequest,
  loaded?: Candidate[],
  readAhead?: SubdomainReadAhead,
): Promise<Placement> {
  const workers = loaded ?? (await placementCandidates(q));
  const candidates = eligibleWorkers(workers, request);
  if (candidates.length === 0) throw await noWorkerError(q, workers, request);
  if (request.port !== undefined) return placeOnPort(q, candidates, request, request.port);
  if (request.subdomain !== undefined) {
    return placeOnSubdomain(q, candidates, request, request.subdomain, readAhead);
  }
  for (const worker of candidates) {
    const placement = await placeAnywhere(q, worker, request, readAhead);
    if (placement) return placement;
  }
  throw new NoWorkerError(
    `Every generated subdomain for ${request.service} is taken on the eligible workers; ` +
      'request a subdomain.',
  );
}

async function placeOnPort(
  q: Queryable,
  candidates: Candidate[],
  request: PlacementRequest,
  port: number,
): Promise<Placement> {
  let takenBy: string | null = null;
  for (const worker of candidates) {
    takenBy = await store.routeIdAtPort(q, worker.id, port);
    if (takenBy === null) return placementAt(worker, request.protocol, { port, subdomain: null });
  }
  throw new ConflictError(
    `Port ${port} is taken on every worker that could take this route.`,
    takenBy ?? undefined,
  );
}

async function placeOnSubdomain(
  q: Queryable,
  candidates: Candidate[],
  request: PlacementRequest,
  subdomain: string,
  readAhead?: SubdomainReadAhead,
): Promise<Placement> {
  let takenBy: string | null = null;
  for (const worker of candidates) {
    takenBy = await routeAtSubdomain(q, worker.id, subdomain, readAhead);
    if (takenBy === null) return placementAt(worker, request.protocol, { port: null, subdomain });
  }
  throw new ConflictError(
    `Subdomain ${subdomain} is taken on every worker that could take this route.`,
    takenBy ?? undefined,
  );
}

async function placeAnywhere(
  q: Queryable,
  worker: Candidate,
  request: PlacementRequest,
  readAhead?: SubdomainReadAhead,
): Promise<Placement | null> {
  if (worker.frontend_mode === 'port') {
    const [first, last] = worker.port_range ?? [0, -1];
    const port = await store.lowestFreePort(q, worker.id, first, last);
    return port === null ? null : placementAt(worker, request.protocol, { port, subdomain: null });
  }
  for (const subdomain of subdomainChoices(request)) {
    if ((await routeAtSubdomain(q, worker.id, subdomain, readAhead)) === null) {
      return placementAt(worker, request.protocol, { port: null, subdomain });
    }
  }
  return null;
}
