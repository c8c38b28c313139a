import { randomUUID } from 'node:crypto';
import type { Route, SessionRouteSpec, SessionRoutesResponse } from '../../proto/index.ts';
import { ConflictError } from '../errors.ts';
import type { Queryable } from '../store/database.ts';
import * as store from '../store/routes.ts';
import { findWorkerRecord, placementCandidates, type Candidate } from '../store/workers.ts';
import type { WriteTx } from '../store/writer.ts';
import {
  isPlaced,
  matchesSelector,
  PlacementPlanner,
  type Placement,
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

// PUT /sessions/:session_id/routes: make a session's routes exactly a given
// list in one write job. Everything that can fail is decided before the
// first write, because a job may only fail before it writes.

/** Planned writes of one session change, decided before anything is written. */
interface SessionPlan {
  deletes: Route[];
  updates: Array<{ before: Route; after: Route }>;
  creates: Array<{ id: string; spec: SessionRouteSpec; placement: Placement }>;
}

/**
 * Makes the routes of `sessionId` exactly `specs`. A route whose protocol,
 * mode or requested placement cannot be met where it is gets replaced: it is
 * deleted and created again, and counts as both.
 */
export async function replaceSessionRoutes(
  tx: WriteTx,
  sessionId: string,
  specs: SessionRouteSpec[],
): Promise<SessionRoutesResponse> {
  const existing = await store.sessionRoutes(tx.sql, sessionId);
  const plan = await planSessionChange(tx.sql, sessionId, existing, specs);
  await applySessionPlan(tx, sessionId, plan);
  return {
    created: plan.creates.length,
    updated: plan.updates.length,
    deleted: plan.deletes.length,
    routes: await store.sessionRoutes(tx.sql, sessionId),
  };
}

async function planSessionChange(
  q: Queryable,
  sessionId: string,
  existing: Route[],
  specs: SessionRouteSpec[],
): Promise<SessionPlan> {
  const byService = new Map(existing.map((route) => [route.service, route]));
  const labels = await workerLabels(q, existing);
  const plan: SessionPlan = { deletes: [], updates: [], creates: [] };
  const toCreate: SessionRouteSpec[] = [];
  for (const spec of specs) {
    const route = byService.get(spec.service);
    byService.delete(spec.service);
    const action = route ? decide(route, spec, labels.get(route.worker_id) ?? {}) : 'create';
    if (action === 'update') plan.updates.push({ before: route!, after: applySpec(route!, spec) });
    if (action === 'replace') plan.deletes.push(route!);
    if (action === 'replace' || action === 'create') toCreate.push(spec);
  }
  plan.deletes.push(...byService.values());
  plan.creates = await placeCreates(q, sessionId, plan.deletes, toCreate);
  return plan;
}

type Action = 'keep' | 'update' | 'replace' | 'create';

/** Decides what happens to an existing route given the spec of its service. */
function decide(route: Route, spec: SessionRouteSpec, labels: Record<string, string>): Action {
  const selector = selectorOf(spec.worker_selector);
  const canStay =
    route.protocol === spec.protocol &&
    route.mode === spec.mode &&
    isAtRequestedAddress(route, spec) &&
    matchesSelector(labels, selector);
  if (!canStay) return 'replace';
  const isSame =
    sameSpec(route, spec) && sameLabels(route.worker_selector ?? {}, selector ?? {});
  return isSame ? 'keep' : 'update';
}

/** Returns `route` with the spec fields of `spec`; placement stays. */
function applySpec(route: Route, spec: SessionRouteSpec): Route {
  const next: Route = {
    ...route,
    backends: spec.backends.map((b) => ({ host: b.host, port: b.port, weight: b.weight })),
    open_to_public: spec.open_to_public,
    allowed_client_ips: spec.allowed_client_ips,
    labels: spec.labels,
  };
  delete next.idle_timeout_s;
  delete next.worker_selector;
  if (spec.idle_timeout_s !== undefined) next.idle_timeout_s = spec.idle_timeout_s;
  const selector = selectorOf(spec.worker_selector);
  if (selector !== undefined) next.worker_selector = selector;
  return next;
}

/** Reads the labels of the workers holding `routes`, to check new selectors against. */
async function workerLabels(q: Queryable, routes: Route[]) {
  const labels = new Map<string, Record<string, string>>();
  for (const workerId of new Set(routes.map((route) => route.worker_id))) {
    const worker = await findWorkerRecord(q, workerId);
    if (worker) labels.set(workerId, worker.labels);
  }
  return labels;
}

/**
 * Places the routes to create against the addresses in use, with the
 * addresses of the routes this change deletes already given back.
 */
async function placeCreates(
  q: Queryable,
  sessionId: string,
  deletes: Route[],
  specs: SessionRouteSpec[],
): Promise<SessionPlan['creates']> {
  if (specs.length === 0) return [];
  const workers = await placementCandidates(q);
  const planner = new PlacementPlanner(workers, (ids) => store.addressesInUse(q, ids));
  await planner.preload([...new Set(deletes.map((route) => route.worker_id))]);
  for (const route of deletes) planner.release(route.worker_id, route);
  const creates: SessionPlan['creates'] = [];
  for (const spec of specs) {
    const id = randomUUID();
    const placement = await placeOne(q, planner, workers, spec, sessionId, id);
    creates.push({ id, spec, placement });
  }
  return creates;
}

async function placeOne(
  q: Queryable,
  planner: PlacementPlanner,
  workers: Candidate[],
  spec: SessionRouteSpec,
  sessionId: string,
  id: string,
): Promise<Placement> {
  const request = placementRequest(spec, sessionId);
  const result = await planner.place(request, id);
  if (isPlaced(result)) return result;
  if (result.kind === 'conflict') {
    throw new ConflictError(`${spec.service}: ${result.detail}`, result.conflictingRouteId);
  }
  throw await noWorkerError(q, workers, request);
}

/** Writes a plan: deletes first, so creates may reuse what they free, then updates and creates. */
async function applySessionPlan(tx: WriteTx, sessionId: string, plan: SessionPlan): Promise<void> {
  for (const route of plan.deletes) {
    const deleted = await store.deleteRoute(tx.sql, route.id);
    if (deleted) recordDeleted(tx, deleted, 'api');
  }
  for (const { before, after } of plan.updates) {
    await store.updateRoute(tx.sql, stampChange(after, tx));
    recordUpdated(tx, before, after);
  }
  for (const { id, spec, placement } of plan.creates) {
    const route = newRoute({ ...spec, id, session_id: sessionId, placement, tx });
    await store.insertRoute(tx.sql, route);
    recordCreated(tx, route);
  }
}
