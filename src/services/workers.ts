import { createHash, randomBytes, randomUUID } from 'node:crypto';
import type {
  Nack,
  RegisterWorkerBody,
  RegisterWorkerResponse,
  Route,
  Worker,
  WorkerEventSubject,
} from '../../proto/index.ts';
import { AppError, ConflictError, NotFoundError } from '../errors.ts';
import type { Sql } from '../store/database.ts';
import { readMeta } from '../store/changes.ts';
import * as routeStore from '../store/routes.ts';
import * as store from '../store/workers.ts';
import type { WriteTx, Writer } from '../store/writer.ts';
import { placeRoute } from './routes.ts';

/** Routes returned in a registration response; the session's snapshot carries the rest. */
const REGISTRATION_ROUTE_LIMIT = 1000;

/** Routes moved by one failover transaction. */
const FAILOVER_BATCH = 200;

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

  constructor(sql: Sql, writer: Writer, heartbeat: HeartbeatSettings) {
    this.#sql = sql;
    this.#writer = writer;
    this.#heartbeat = heartbeat;
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
    await store.upsertInstance(tx.sql, { workerId, instanceId, generation, tokenHash: hash });
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

  recordAck(key: store.InstanceKey, revision: number): Promise<boolean> {
    return store.recordAck(this.#sql, key, revision, new Date());
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
    const moved: Route[] = [];
    let afterId: string | undefined;
    for (;;) {
      const page = await routeStore.strandedRoutes(this.#sql, FAILOVER_BATCH, afterId);
      if (page.length === 0) return moved;
      afterId = page[page.length - 1].id;
      moved.push(...(await this.#writer.run((tx) => moveRoutes(tx, page))));
    }
  }
}

async function moveRoutes(tx: WriteTx, routes: Route[]): Promise<Route[]> {
  const moved: Route[] = [];
  for (const stale of routes) {
    const route = await routeStore.findRoute(tx.sql, stale.id);
    if (!route || route.status !== 'unavailable') continue;
    const placement = await tryPlace(tx, route);
    if (!placement) continue;

    const next: Route = {
      ...route,
      worker_id: placement.worker.id,
      port: placement.port,
      subdomain: placement.subdomain,
      url: placement.url,
      status: 'pending',
      revision: tx.nextRevision(),
      updated_at: tx.now.toISOString(),
    };
    await routeStore.updateRoute(tx.sql, next);
    tx.record({
      type: 'route.moved',
      route_id: next.id,
      session_id: next.session_id,
      worker_id: next.worker_id,
      prev_worker_id: route.worker_id,
      prev_revision: route.revision,
      route: next,
      previous: previousPlacement(route),
    });
    moved.push(next);
  }
  return moved;
}

async function tryPlace(tx: WriteTx, route: Route) {
  const [{ frontend_mode: frontendMode }] = await tx.sql`
    SELECT frontend_mode FROM workers WHERE id = ${route.worker_id}`;
  try {
    return await placeRoute(tx.sql, {
      protocol: route.protocol,
      service: route.service,
      sessionId: route.session_id,
      frontendMode: frontendMode as 'port' | 'wildcard',
      excludeWorkerId: route.worker_id,
    });
  } catch (error) {
    // Nowhere to go now: the route stays unavailable and is tried again on the next sweep.
    if (error instanceof AppError) return null;
    throw error;
  }
}

function previousPlacement(route: Route) {
  const previous: { worker_id: string; port?: number; subdomain?: string; url: string } = {
    worker_id: route.worker_id,
    url: route.url,
  };
  if (route.port !== null) previous.port = route.port;
  if (route.subdomain !== null) previous.subdomain = route.subdomain;
  return previous;
}
