import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type {
  DrainWorkerResponse,
  Nack,
  RegisterWorkerBody,
  RegisterWorkerResponse,
  Route,
  Worker,
  WorkerEventSubject,
} from '../../proto/index.ts';
import { ConflictError, NotFoundError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { Sql } from '../store/database.ts';
import { readMeta } from '../store/changes.ts';
import * as routeStore from '../store/routes.ts';
import * as store from '../store/workers.ts';
import type { WriteTx, Writer } from '../store/writer.ts';
import {
  findMismatch,
  hasRoom,
  isPlaced,
  PlacementPlanner,
  type PlannedAddressBook,
  type PlacementRequest,
} from './placement.ts';
import { recordMoved } from './route-changes.ts';

/** Routes returned in a registration response; the session's snapshot carries the rest. */
const REGISTRATION_ROUTE_LIMIT = 1000;

/**
 * Routes moved by one write transaction. The bound keeps each transaction
 * short (about 0.3 s on 2 cores), so other writes wait little behind it.
 * NOTE: a batch that waits and runs past the writer's job timeout (2 s) fails
 * that sweep, which then logs the database as unreachable. The next sweep
 * moves the rest.
 */
const MOVE_BATCH = 2000;

/** How long reported route activity waits before it is written, batched, in ms. */
const ACTIVITY_FLUSH_MS = 1000;

export interface HeartbeatSettings {
  intervalMs: number;
  misses: number;
}

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

function subject(worker: store.WorkerRecord, instanceId?: string): WorkerEventSubject {
  const result: WorkerEventSubject = {
    id: worker.id,
    authority: worker.authority,
    status: worker.status,
    generation: worker.generation,
  };
  if (instanceId !== undefined) result.instance_id = instanceId;
  return result;
}

/** Registers workers, tracks their sessions and liveness, and fails their routes over. */
export class WorkerService {
  readonly #sql: Sql;
  readonly #writer: Writer;
  readonly #heartbeat: HeartbeatSettings;
  readonly #log: Logger | undefined;
  /** Reported activity not yet written, by route id; the latest report of each wins. */
  #activity = new Map<string, routeStore.RouteActivity>();
  #activityTimer: NodeJS.Timeout | undefined;
  /** The activity write in progress; the next flush waits for it rather than pile up. */
  #activityWrite: Promise<void> | null = null;
  /** The move of routes that no longer fit their worker, and the one queued after it. */
  #misfitRun: Promise<void> | undefined;
  #misfitRerun: Promise<void> | undefined;

  constructor(sql: Sql, writer: Writer, heartbeat: HeartbeatSettings, log?: Logger) {
    this.#sql = sql;
    this.#writer = writer;
    this.#heartbeat = heartbeat;
    this.#log = log;
  }

  get(id: string): Promise<Worker | null> {
    return store.findWorker(this.#sql, id);
  }

  list(): Promise<Worker[]> {
    return store.listWorkers(this.#sql);
  }

  /**
   * Registers a worker instance. The same authority and instance id again is
   * a restart of that process: its generation rises and its old token dies.
   */
  async register(
    body: RegisterWorkerBody,
  ): Promise<{ response: RegisterWorkerResponse; isNew: boolean }> {
    const instanceId = body.instance_id ?? randomUUID();
    const sessionToken = randomBytes(32).toString('base64url');
    const { workerId, isNew, generation } = await this.#writer.run((tx) =>
      this.#registerJob(tx, body, instanceId, hashToken(sessionToken)),
    );
    // A new range or mode may leave routes this worker cannot serve, and a new worker may
    // take routes that fit nowhere before.
    await this.moveMisfits();
    const [worker, routes, meta] = await Promise.all([
      store.findWorker(this.#sql, workerId),
      routeStore.workerRoutes(this.#sql, workerId, REGISTRATION_ROUTE_LIMIT + 1),
      readMeta(this.#sql),
    ]);
    const response: RegisterWorkerResponse = {
      worker: worker as Worker,
      instance_id: instanceId,
      session_token: sessionToken,
      generation,
      heartbeat_interval_ms: this.#heartbeat.intervalMs,
      heartbeat_misses: this.#heartbeat.misses,
      epoch: meta.epoch,
      revision: meta.revision,
      routes: routes.slice(0, REGISTRATION_ROUTE_LIMIT),
      routes_complete: routes.length <= REGISTRATION_ROUTE_LIMIT,
    };
    return { response, isNew };
  }

  async #registerJob(tx: WriteTx, body: RegisterWorkerBody, instanceId: string, hash: string) {
    if (body.wildcard_domain) {
      const owner = await store.wildcardDomainOwner(tx.sql, body.wildcard_domain, body.authority);
      if (owner) {
        throw new ConflictError(
          `Wildcard domain ${body.wildcard_domain} belongs to worker ${owner}; pick another.`,
        );
      }
    }
    const existing = await store.findWorkerByAuthority(tx.sql, body.authority);
    const workerId = existing?.id ?? randomUUID();
    const generation = (existing?.generation ?? 0) + 1;
    const status = existing?.status === 'draining' ? 'draining' : 'alive';
    await store.upsertWorker(tx.sql, { id: workerId, body, generation, status, at: tx.now });
    await store.upsertInstance(tx.sql, { workerId, instanceId, generation, tokenHash: hash, at: tx.now });
    // Instances silent for a whole lost deadline are stopped processes, not members of the set.
    const deadlineMs = this.#heartbeat.intervalMs * this.#heartbeat.misses;
    await store.deleteStaleInstances(tx.sql, workerId, new Date(tx.now.getTime() - deadlineMs));
    const record = (await store.findWorkerRecord(tx.sql, workerId)) as store.WorkerRecord;
    tx.record({ type: 'worker.registered', worker_id: workerId, worker: subject(record, instanceId) });
    return { workerId, isNew: existing === null, generation };
  }

  /** Deregisters a worker; its sessions close and its routes fail over. */
  async deregister(id: string): Promise<void> {
    await this.#writer.run(async (tx) => {
      const worker = await store.findWorkerRecord(tx.sql, id);
      if (!worker) throw new NotFoundError(`Worker ${id} not found.`);
      await store.setWorkerStatus(tx.sql, id, 'deregistered');
      worker.status = 'deregistered';
      tx.record({ type: 'worker.deregistered', worker_id: id, worker: subject(worker) });
    });
  }

  /**
   * Declares lost every worker still silent since `cutoff`, checked again
   * under the write lock so a heartbeat that just arrived wins.
   *
   * @returns the workers declared lost.
   */
  markLost(cutoff: Date): Promise<store.WorkerRecord[]> {
    return this.#writer.run(async (tx) => {
      const ids = await store.silentWorkers(tx.sql, cutoff);
      const lost: store.WorkerRecord[] = [];
      for (const id of ids) {
        const worker = (await store.findWorkerRecord(tx.sql, id)) as store.WorkerRecord;
        await store.setWorkerStatus(tx.sql, id, 'lost');
        worker.status = 'lost';
        tx.record({ type: 'worker.lost', worker_id: id, worker: subject(worker) });
        lost.push(worker);
      }
      return lost;
    });
  }

  /** Returns ids of workers silent since `cutoff`, without changing anything. */
  silentWorkers(cutoff: Date): Promise<string[]> {
    return store.silentWorkers(this.#sql, cutoff);
  }

  /**
   * Marks an instance's session open on this coordinator. A lost worker that
   * comes back with a valid token is alive again.
   *
   * @returns false when the registration was superseded meanwhile.
   */
  openSession(key: store.InstanceKey, coordinatorId: string, appliedRevision: number) {
    return this.#writer.run(async (tx) => {
      const isCurrent = await store.setInstanceSession(tx.sql, key, {
        coordinatorId,
        appliedRevision,
        at: tx.now,
      });
      if (!isCurrent) return false;
      const worker = (await store.findWorkerRecord(tx.sql, key.workerId)) as store.WorkerRecord;
      if (worker.status === 'lost') {
        await store.setWorkerStatus(tx.sql, worker.id, 'alive');
        worker.status = 'alive';
        tx.record({ type: 'worker.recovered', worker_id: worker.id, worker: subject(worker) });
      }
      const event = subject(worker, key.instanceId);
      tx.record({ type: 'worker.connected', worker_id: worker.id, worker: event });
      return true;
    });
  }

  /** Marks a session closed unless another coordinator took the instance over meanwhile. */
  closeSession(key: store.InstanceKey, coordinatorId: string): Promise<void> {
    return this.#writer.run(async (tx) => {
      const isHeld = await store.releaseInstanceSession(tx.sql, key, coordinatorId);
      if (!isHeld) return;
      const worker = (await store.findWorkerRecord(tx.sql, key.workerId)) as store.WorkerRecord;
      const event = subject(worker, key.instanceId);
      tx.record({ type: 'worker.disconnected', worker_id: worker.id, worker: event });
    });
  }

  recordAck(key: store.InstanceKey, revision: number, clearsNack = true): Promise<boolean> {
    return store.recordAck(this.#sql, key, revision, new Date(), clearsNack);
  }

  /**
   * Records the acks of many instances in one transaction.
   *
   * @returns the acks skipped because their rows were locked, to record later.
   */
  recordAcks(acks: store.AckRecord[]): Promise<store.AckRecord[]> {
    return store.recordAcks(this.#sql, acks, new Date());
  }

  recordNack(key: store.InstanceKey, nack: Nack): Promise<void> {
    return store.recordNack(this.#sql, key, nack);
  }

  writeHeartbeats(beats: Array<store.InstanceKey & { at: Date }>): Promise<void> {
    return store.writeHeartbeats(this.#sql, beats);
  }

  findSession(tokenHash: string): Promise<store.InstanceIdentity | null> {
    return store.findInstanceByTokenHash(this.#sql, tokenHash);
  }

  /**
   * Moves routes off lost and deregistered workers onto live ones with the
   * same mode and protocol; a route with nowhere to go stays and waits.
   *
   * @returns the routes moved.
   */
  async failOver(): Promise<Route[]> {
    if (!(await this.#canMoveStranded())) return [];
    return this.#moveInBatches((tx, afterId) =>
      routeStore.strandedRoutes(tx.sql, MOVE_BATCH, afterId),
    );
  }

  /**
   * Checks, without the write lock, whether some stranded route has a live
   * worker that could take it, so routes with nowhere to go cost one read per
   * sweep instead of a write transaction per batch.
   */
  async #canMoveStranded(): Promise<boolean> {
    const needs = await routeStore.strandedNeeds(this.#sql);
    if (needs.length === 0) return false;
    const workers = (await store.placementCandidates(this.#sql)).filter(hasRoom);
    return needs.some((need) => {
      const request = { ...need, service: '', sessionId: '' };
      return workers.some((worker) => findMismatch(worker, request) === null);
    });
  }

  /**
   * Moves routes that do not fit their live worker (after it registered again
   * with a narrower port range, another mode or fewer protocols) to workers
   * they fit. Those that fit nowhere stay, read `unavailable`, and are tried
   * again at the next registration. Calls made during a run share one rerun.
   * A failure is logged, not thrown, so the registration that called it still succeeds.
   */
  moveMisfits(): Promise<void> {
    if (!this.#misfitRun) {
      this.#misfitRun = this.#moveMisfitsOnce().finally(() => {
        this.#misfitRun = undefined;
      });
      return this.#misfitRun;
    }
    // The running move may have read before the caller's change committed, so one more follows.
    this.#misfitRerun ??= this.#misfitRun.then(() => {
      this.#misfitRerun = undefined;
      return this.moveMisfits();
    });
    return this.#misfitRerun;
  }

  async #moveMisfitsOnce(): Promise<void> {
    try {
      const moved = await this.#moveInBatches((tx, afterId) =>
        routeStore.misfitRoutes(tx.sql, MOVE_BATCH, afterId),
      );
      if (moved.length > 0) {
        this.#log?.info({ routes: moved.length }, 'moved routes that no longer fit their worker');
      }
    } catch (error) {
      this.#log?.warn(
        { err: error },
        'moving routes that no longer fit their worker failed; the next registration retries',
      );
    }
  }

  /**
   * Sets a worker `draining`: it keeps its routes but takes no new ones.
   * With `move`, its routes move to other live workers now, in batches;
   * those that fit nowhere stay.
   */
  async drain(id: string, options: { move: boolean }): Promise<DrainWorkerResponse> {
    await this.#writer.run(async (tx) => {
      const worker = await store.findWorkerRecord(tx.sql, id);
      if (!worker) throw new NotFoundError(`Worker ${id} not found.`);
      if (worker.status === 'lost' || worker.status === 'deregistered') {
        throw new ConflictError(
          `Worker ${worker.authority} is ${worker.status}; only a live worker can drain, ` +
            'and the routes of this one fail over by themselves.',
        );
      }
      if (worker.status !== 'draining') await store.setWorkerStatus(tx.sql, id, 'draining');
    });
    const moved = options.move
      ? await this.#moveInBatches((tx, afterId) =>
          routeStore.workerRoutes(tx.sql, id, MOVE_BATCH, afterId),
        )
      : [];
    const worker = (await store.findWorker(this.#sql, id)) as Worker;
    return { worker, moved: moved.length, remaining: worker.route_count };
  }

  /**
   * Runs one write job per batch of routes that `load` returns, in id order
   * after the previous batch, moving each route that fits somewhere. A job
   * that loads a full batch queues the next one at once, so the writer starts
   * it as soon as this one commits, while workers still apply the last diff.
   */
  async #moveInBatches(
    load: (tx: WriteTx, afterId: string | undefined) => Promise<Route[]>,
  ): Promise<Route[]> {
    const jobs: Array<Promise<Route[]>> = [];
    const plans: MovePlans = {};
    const submit = (afterId: string | undefined) => {
      let isNextQueued = false;
      const job = this.#writer.run(async (tx) => {
        const routes = await load(tx, afterId);
        // A job that the writer runs again after a failed batch queues no second successor.
        if (routes.length === MOVE_BATCH && !isNextQueued) {
          isNextQueued = true;
          submit(routes[routes.length - 1].id);
        }
        return moveRoutes(tx, routes, plans);
      });
      jobs.push(job);
    };
    submit(undefined);
    return settleInOrder(jobs);
  }

  /**
   * Takes the routes a heartbeat reports active. Writes are batched: one
   * statement per second at most, whatever the number of workers.
   */
  recordActivity(workerId: string, routes: Array<{ id: string; last_activity_at: string }>): void {
    for (const route of routes) {
      const at = new Date(route.last_activity_at);
      const known = this.#activity.get(route.id);
      if (known && known.workerId === workerId && known.at >= at) continue;
      this.#activity.set(route.id, { routeId: route.id, workerId, at });
    }
    if (this.#activity.size === 0 || this.#activityTimer) return;
    this.#activityTimer = setTimeout(() => void this.flushActivity(), ACTIVITY_FLUSH_MS);
    // Pending activity alone keeps no process alive; stopping flushes it.
    this.#activityTimer.unref();
  }

  /** Writes the route activity taken so far; a failed write is kept for the next flush. */
  async flushActivity(): Promise<void> {
    clearTimeout(this.#activityTimer);
    this.#activityTimer = undefined;
    while (this.#activityWrite) await this.#activityWrite;
    if (this.#activity.size === 0) return;
    const items = this.#activity;
    this.#activity = new Map();
    const write = routeStore.recordRouteActivity(this.#sql, [...items.values()]);
    const settled = write.then(
      () => {},
      () => {},
    );
    this.#activityWrite = settled;
    try {
      await write;
    } catch (error) {
      const fields = { err: error, routes: items.size };
      this.#log?.warn(fields, 'writing route activity failed; will retry');
      for (const [id, item] of items) if (!this.#activity.has(id)) this.#activity.set(id, item);
      this.#activityTimer ??= setTimeout(() => void this.flushActivity(), ACTIVITY_FLUSH_MS);
      this.#activityTimer.unref();
    } finally {
      if (this.#activityWrite === settled) this.#activityWrite = null;
    }
  }
}

/**
 * Waits for every job, including ones queued while waiting, and returns
 * their routes in order; the first failure is thrown once all have settled.
 */
async function settleInOrder(jobs: Array<Promise<Route[]>>): Promise<Route[]> {
  const moved: Route[] = [];
  let failure: { error: unknown } | undefined;
  for (let i = 0; i < jobs.length; i++) {
    try {
      moved.push(...(await jobs[i]));
    } catch (error) {
      failure ??= { error };
    }
  }
  if (failure) throw failure.error;
  return moved;
}

/**
 * State the batches of one move run pass on: the addresses the last batch
 * left, valid while the revision it committed at is still the latest.
 */
interface MovePlans {
  last?: { book: PlannedAddressBook; revision: number };
}

/**
 * Moves routes whose worker is gone or draining onto live workers: plans in
 * memory against one read of the candidates and their addresses in use, then
 * writes every move in one statement and records one `route.moved` each.
 */
async function moveRoutes(tx: WriteTx, routes: Route[], plans: MovePlans): Promise<Route[]> {
  if (routes.length === 0) return [];
  const workers = await store.placementCandidates(tx.sql);
  // Every route change takes a revision, so an unchanged revision means no address changed
  // since the previous batch, and its addresses need no second read.
  const known = plans.last?.revision === tx.revision ? plans.last.book : undefined;
  const planner = new PlacementPlanner(
    workers,
    (ids) => routeStore.addressesInUse(tx.sql, ids),
    known,
  );
  await planner.preload(workers.filter(hasRoom).map((worker) => worker.id));
  const moves: Array<{ before: Route; after: Route }> = [];
  for (const route of routes) {
    const placement = await planner.place(moveRequest(route), route.id);
    if (!isPlaced(placement)) continue;
    const after: Route = {
      ...route,
      worker_id: placement.worker.id,
      port: placement.port,
      subdomain: placement.subdomain,
      url: placement.url,
    };
    moves.push({ before: route, after });
  }
  const moved = await recordMoves(tx, moves);
  plans.last = { book: planner.addressBook, revision: tx.revision };
  return moved;
}

/** Builds the request of a move: same mode, protocol and selector, and the subdomain if free. */
function moveRequest(route: Route): PlacementRequest {
  return {
    protocol: route.protocol,
    service: route.service,
    sessionId: route.session_id,
    frontendMode: route.port !== null ? 'port' : 'wildcard',
    selector: route.worker_selector,
    excludeWorkerId: route.worker_id,
    preferredSubdomain: route.subdomain ?? undefined,
  };
}

async function recordMoves(tx: WriteTx, moves: Array<{ before: Route; after: Route }>) {
  for (const { before, after } of moves) {
    after.revision = tx.nextRevision();
    after.status = 'pending';
    after.updated_at = tx.now.toISOString();
    recordMoved(tx, before, after);
  }
  await routeStore.applyMoves(
    tx.sql,
    moves.map(({ after }) => after),
    tx.now,
  );
  return moves.map(({ after }) => after);
}
