import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RouteStatus, WorkerStatus } from '../proto/index.ts';
import type { Logger } from './log.ts';
import type { Sql } from './store/database.ts';
import { routeStatusCounts, workerStatusCounts, workerSyncRows } from './store/metrics.ts';

// Prometheus metrics of one coordinator, served at `GET /metrics`. Each coordinator has its own
// registry, so several can run in one process (as the tests do) without clashing names.

/** Counts that the worker session hub and its sessions report. */
export interface SyncMetrics {
  /** Counts one message sent to a worker instance, with its size in bytes. */
  messageSent(type: string, bytes: number): void;
  /** Observes the time from a change's commit to its acknowledgement by a worker instance. */
  changeAcknowledged(latencyMs: number): void;
  nackReceived(reason: string): void;
  /** Counts a session the coordinator closed, by close code. */
  sessionClosed(code: number): void;
}

/** Counts that the group-commit writer reports. */
export interface WriterMetrics {
  /** Observes how many jobs shared one committed transaction. */
  batchCommitted(jobs: number): void;
}

/** Counts that the sweeper reports. */
export interface SweepMetrics {
  workersLost(count: number): void;
  routesFailedOver(count: number): void;
}

/** One finished HTTP request, as the REST layer reports it. */
export interface RequestObservation {
  method: string;
  /** The route template, such as `/routes/:id`, so ids do not become label values. */
  route: string;
  status: number;
  durationMs: number;
}

/** Sources of the gauges that are read on each scrape. */
export interface MetricSources {
  sql: Sql;
  /** Connections the pool may open. */
  poolSize: number;
  heartbeatIntervalMs: number;
  log: Logger;
  /** Bytes written to worker sockets and not yet sent, summed over sessions. */
  sendQueueBytes: () => number;
  workerSessions: () => number;
  eventStreamSubscribers: () => number;
}

/** A scrape waits at most this long for the database, then reports `appproxy_database_up 0`. */
const SCRAPE_QUERY_TIMEOUT_MS = 2000;

const WORKER_STATUSES: WorkerStatus[] = ['alive', 'lost', 'draining', 'deregistered'];
const ROUTE_STATUSES: RouteStatus[] = ['pending', 'active', 'unavailable'];

/** Commit-to-ack latencies span a local ack (milliseconds) to a backed-off resend (a minute). */
const PROPAGATION_BUCKETS_S = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** The writer's batch limit is 100 jobs per transaction. */
const BATCH_BUCKETS = [1, 2, 5, 10, 20, 50, 100];

/**
 * The metrics of one coordinator. Counters are updated as things happen;
 * gauges of database state, pool use, send queues and subscribers are read on
 * each scrape.
 */
export class CoordinatorMetrics implements SyncMetrics, WriterMetrics, SweepMetrics {
  readonly registry = new Registry();
  readonly #sources: MetricSources;
  readonly #events: EventMetrics;
  readonly #database: DatabaseGauges;
  /** Whether the last scrape read the database; failures are logged only when this changes. */
  #isDatabaseReadable = true;

  constructor(sources: MetricSources) {
    this.#sources = sources;
    collectDefaultMetrics({ register: this.registry });
    this.#events = createEventMetrics(this.registry);
    this.#database = createDatabaseGauges(this.registry);
    createLiveGauges(this.registry, sources);
  }

  messageSent(type: string, bytes: number): void {
    this.#events.messages.inc({ type });
    this.#events.messageBytes.inc({ type }, bytes);
  }

  changeAcknowledged(latencyMs: number): void {
    this.#events.propagation.observe(Math.max(0, latencyMs) / 1000);
  }

  nackReceived(reason: string): void {
    this.#events.nacks.inc({ reason });
  }

  sessionClosed(code: number): void {
    this.#events.sessionCloses.inc({ code: String(code) });
  }

  workersLost(count: number): void {
    this.#events.workersLost.inc(count);
  }

  routesFailedOver(count: number): void {
    this.#events.routesFailedOver.inc(count);
  }

  batchCommitted(jobs: number): void {
    this.#events.batchJobs.observe(jobs);
  }

  observeRequest(request: RequestObservation): void {
    const labels = { method: request.method, route: request.route, status: String(request.status) };
    this.#events.httpDuration.observe(labels, request.durationMs / 1000);
  }

  /** Reads the database gauges, then renders every metric as Prometheus text. */
  async render(): Promise<{ contentType: string; body: string }> {
    await this.#refreshDatabaseGauges();
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }

  async #refreshDatabaseGauges(): Promise<void> {
    const gauges = this.#database;
    try {
      const reading = readDatabaseState(this.#sources.sql);
      const state = await withTimeout(reading, SCRAPE_QUERY_TIMEOUT_MS);
      setDatabaseGauges(gauges, state, this.#sources.heartbeatIntervalMs);
      gauges.up.set(1);
      if (!this.#isDatabaseReadable) {
        this.#sources.log.info('metrics scrape reads the database again');
      }
      this.#isDatabaseReadable = true;
    } catch (error) {
      // Stale values would look current, so the database gauges stay empty until it responds.
      for (const gauge of [gauges.workers, gauges.routes, gauges.lagRevisions]) gauge.reset();
      for (const gauge of [gauges.lagSeconds, gauges.missedHeartbeats]) gauge.reset();
      gauges.up.set(0);
      if (this.#isDatabaseReadable) {
        this.#sources.log.warn({ err: error }, 'metrics scrape failed to read the database');
      }
      this.#isDatabaseReadable = false;
    }
  }
}

/** Counters and histograms that the hub, writer, sweeper and REST layer update. */
interface EventMetrics {
  propagation: Histogram;
  messages: Counter;
  messageBytes: Counter;
  nacks: Counter;
  sessionCloses: Counter;
  workersLost: Counter;
  routesFailedOver: Counter;
  batchJobs: Histogram;
  httpDuration: Histogram;
}

function createEventMetrics(registry: Registry): EventMetrics {
  const registers = [registry];
  const counter = (name: string, help: string, labelNames: string[] = []) =>
    new Counter({ name, help, labelNames, registers });
  return {
    propagation: new Histogram({
      name: 'appproxy_change_propagation_seconds',
      help: "Time from a change's commit to its acknowledgement by a worker instance",
      buckets: PROPAGATION_BUCKETS_S,
      registers,
    }),
    messages: counter(
      'appproxy_worker_messages_sent_total',
      'Messages sent to worker instances, by type (a large snapshot is several messages)',
      ['type'],
    ),
    messageBytes: counter(
      'appproxy_worker_sent_bytes_total',
      'Bytes of the messages sent to worker instances, by type',
      ['type'],
    ),
    nacks: counter(
      'appproxy_worker_nacks_total',
      'Nacks received from worker instances, by reason',
      ['reason'],
    ),
    sessionCloses: counter(
      'appproxy_worker_session_closes_total',
      'Worker sessions this coordinator closed, by WebSocket close code',
      ['code'],
    ),
    workersLost: counter(
      'appproxy_workers_lost_total',
      'Workers this coordinator declared lost after missed heartbeats',
    ),
    routesFailedOver: counter(
      'appproxy_routes_failed_over_total',
      'Routes this coordinator moved off lost or deregistered workers',
    ),
    batchJobs: new Histogram({
      name: 'appproxy_write_batch_jobs',
      help: 'Write jobs committed together in one transaction (group commit)',
      buckets: BATCH_BUCKETS,
      registers,
    }),
    httpDuration: new Histogram({
      name: 'appproxy_http_request_duration_seconds',
      help: 'REST request duration, by method, route template and status',
      labelNames: ['method', 'route', 'status'],
      registers,
    }),
  };
}

/** Creates the gauges that prom-client's `collect` reads from memory at scrape time. */
function createLiveGauges(registry: Registry, sources: MetricSources): void {
  const registers = [registry];
  const gauge = (name: string, help: string, read: () => number) =>
    new Gauge({
      name,
      help,
      registers,
      collect() {
        this.set(read());
      },
    });
  gauge(
    'appproxy_worker_send_queue_bytes',
    'Bytes written to worker sockets and not yet sent, summed over sessions',
    sources.sendQueueBytes,
  );
  gauge(
    'appproxy_worker_sessions',
    'Worker sessions open on this coordinator',
    sources.workerSessions,
  );
  gauge(
    'appproxy_event_stream_subscribers',
    'Clients of the live event stream on this coordinator',
    sources.eventStreamSubscribers,
  );
  gauge('appproxy_db_pool_waiting', 'Queries waiting for a free database connection', () => {
    return sources.sql.stats.waiting;
  });
  gauge('appproxy_db_pool_max_connections', 'Connections the database pool may open', () => {
    return sources.poolSize;
  });
  new Gauge({
    name: 'appproxy_db_pool_connections',
    help: 'Database pool connections by state: busy, idle, opening',
    labelNames: ['state'],
    registers,
    collect() {
      const stats = sources.sql.stats;
      this.set({ state: 'busy' }, stats.connections - stats.idle);
      this.set({ state: 'idle' }, stats.idle);
      this.set({ state: 'opening' }, stats.opening);
    },
  });
}

interface DatabaseGauges {
  up: Gauge;
  workers: Gauge;
  routes: Gauge;
  lagRevisions: Gauge;
  lagSeconds: Gauge;
  missedHeartbeats: Gauge;
}

function createDatabaseGauges(registry: Registry): DatabaseGauges {
  const registers = [registry];
  const perWorker = ['worker_id', 'authority'];
  return {
    up: new Gauge({
      name: 'appproxy_database_up',
      help: 'Whether the last scrape read the database state (1) or not (0)',
      registers,
    }),
    workers: new Gauge({
      name: 'appproxy_workers',
      help: 'Workers by status, from the database',
      labelNames: ['status'],
      registers,
    }),
    routes: new Gauge({
      name: 'appproxy_routes',
      help: 'Routes by status, from the database',
      labelNames: ['status'],
      registers,
    }),
    lagRevisions: new Gauge({
      name: 'appproxy_worker_lag_revisions',
      help: "Revisions between a worker's target and its applied revision",
      labelNames: perWorker,
      registers,
    }),
    lagSeconds: new Gauge({
      name: 'appproxy_worker_lag_seconds',
      help: 'Age of the oldest change a worker has not acknowledged; 0 when in sync',
      labelNames: perWorker,
      registers,
    }),
    missedHeartbeats: new Gauge({
      name: 'appproxy_worker_missed_heartbeats',
      help: 'Heartbeat intervals since the last heartbeat of an alive or draining worker',
      labelNames: perWorker,
      registers,
    }),
  };
}

type DatabaseState = {
  workers: Awaited<ReturnType<typeof workerSyncRows>>;
  workerCounts: Map<WorkerStatus, number>;
  routeCounts: Map<RouteStatus, number>;
};

async function readDatabaseState(sql: Sql): Promise<DatabaseState> {
  const [workers, workerCounts, routeCounts] = await Promise.all([
    workerSyncRows(sql),
    workerStatusCounts(sql),
    routeStatusCounts(sql),
  ]);
  return { workers, workerCounts, routeCounts };
}

function setDatabaseGauges(gauges: DatabaseGauges, state: DatabaseState, intervalMs: number) {
  for (const status of WORKER_STATUSES) {
    gauges.workers.set({ status }, state.workerCounts.get(status) ?? 0);
  }
  for (const status of ROUTE_STATUSES) {
    gauges.routes.set({ status }, state.routeCounts.get(status) ?? 0);
  }
  // Reset first, so that deregistered and deleted workers leave no series behind.
  for (const gauge of [gauges.lagRevisions, gauges.lagSeconds, gauges.missedHeartbeats]) {
    gauge.reset();
  }
  const now = Date.now();
  for (const worker of state.workers) {
    const labels = { worker_id: worker.id, authority: worker.authority };
    const lagMs = worker.lagSince === null ? 0 : Math.max(0, now - worker.lagSince.getTime());
    gauges.lagRevisions.set(labels, worker.lagRevisions);
    gauges.lagSeconds.set(labels, lagMs / 1000);
    if (worker.status !== 'alive' && worker.status !== 'draining') continue;
    const silentMs = worker.lastHeartbeatAt === null ? 0 : now - worker.lastHeartbeatAt.getTime();
    gauges.missedHeartbeats.set(labels, Math.max(0, Math.floor(silentMs / intervalMs)));
  }
}

async function withTimeout<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms`)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
