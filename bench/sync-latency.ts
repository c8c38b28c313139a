// Measures how long a route write takes to reach a worker and come back as an
// ack, with 100 connected workers that have 50,000 routes between them. It runs
// on the PostgreSQL of the test suites, against a coordinator in its own
// process, stops by itself and prints its numbers.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import postgres from 'postgres';
import type { Route } from '../proto/index.ts';
import { insertRoutesSpread, type BulkWorker } from '../test/helpers/bulk-routes.ts';
import { createTestDatabase } from '../test/helpers/database.ts';
import { BenchWorker, callApi, startCoordinatorChild, type Arrival } from './sync-support.ts';
import { quantile } from './support.ts';

const WORKERS = Number(process.env.BENCH_WORKERS ?? 100);
const ROUTES = Number(process.env.BENCH_ROUTES ?? 50_000);
const WRITES = Number(process.env.BENCH_WRITES ?? 2000);
const CONCURRENCY = 16;

export interface LatencyFigures {
  label: string;
  /** Write request sent until the worker applied and acknowledged it, in ms. */
  toAck: number[];
  /** Write request sent until its 2xx response, in ms. */
  toResponse: number[];
  /** Revision of each write and when its ack went out (performance.now()). */
  acks: Array<{ revision: number; at: number }>;
}

/**
 * Commits seen through LISTEN on the coordinator's notification channel: each
 * transaction notifies its last revision as it commits. The bench process
 * hears it about 0.6 ms later (the machine's measured INSERT + NOTIFY figure),
 * so commit → ack below reads that much short.
 */
const commits: Array<{ revision: number; at: number }> = [];

/** Time from each write's commit, as LISTEN heard it, until its ack, in ms. */
function commitToAck(figures: LatencyFigures): number[] {
  return figures.acks.map(({ revision, at }) => {
    let low = 0;
    let high = commits.length - 1;
    while (low < high) {
      const middle = (low + high) >> 1;
      if (commits[middle].revision >= revision) high = middle;
      else low = middle + 1;
    }
    return at - commits[low].at;
  });
}

/** Routes each pending write is waiting for, by route id. */
const waiting = new Map<string, (arrival: Arrival) => void>();

/** Arrivals of new routes whose create response had not come back yet. */
const arrivedEarly = new Map<string, Arrival>();

function onArrival(arrival: Arrival): void {
  for (const route of arrival.routes) {
    const waiter = waiting.get(route.id);
    if (waiter) waiter(arrival);
    else if (arrival.type === 'diff') arrivedEarly.set(route.id, arrival);
  }
}

/** Sends one write and waits for both its response and the worker's ack of its route. */
async function measure(
  figures: LatencyFigures,
  routeId: string | null,
  send: () => Promise<{ id: string }>,
): Promise<void> {
  const startedAt = performance.now();
  let resolveArrival: (value: { arrival: Arrival; revision: number }) => void = () => {};
  const arrived = new Promise<{ arrival: Arrival; revision: number }>((resolve) => {
    resolveArrival = resolve;
  });
  const expect = (id: string) =>
    waiting.set(id, (arrival) => {
      const route = arrival.routes.find((item) => item.id === id) as Arrival['routes'][number];
      waiting.delete(id);
      resolveArrival({ arrival, revision: route.revision });
    });
  if (routeId) expect(routeId);
  const response = await send();
  figures.toResponse.push(performance.now() - startedAt);
  if (!routeId) {
    expect(response.id);
    const early = arrivedEarly.get(response.id);
    arrivedEarly.delete(response.id);
    if (early) waiting.get(response.id)?.(early);
  }
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    const error = new Error(`no ack of route ${routeId ?? response.id} within 10 s`);
    timer = setTimeout(() => reject(error), 10_000);
  });
  const { arrival, revision } = await Promise.race([arrived, timeout]).finally(() => {
    clearTimeout(timer);
  });
  figures.toAck.push(Math.max(0, arrival.at - startedAt));
  figures.acks.push({ revision, at: arrival.at });
}

function newFigures(label: string): LatencyFigures {
  return { label, toAck: [], toResponse: [], acks: [] };
}

export function summarize(values: number[]): string {
  const sorted = [...values].sort((a, b) => a - b);
  const f = (q: number) => quantile(sorted, q).toFixed(2);
  return `p50 ${f(0.5)}, p99 ${f(0.99)}, max ${f(1)}`;
}

/** Latencies of one kind of write, each list in ms. */
export interface LatencyResult {
  label: string;
  commitToAck: number[];
  requestToAck: number[];
  requestToResponse: number[];
}

/**
 * Sets up 100 workers with 50,000 routes and measures three kinds of writes.
 * With `crossInstance`, the writes go through a second coordinator on the
 * same database, so each change reaches the workers through LISTEN/NOTIFY.
 */
export async function measureLatency(
  options: { crossInstance?: boolean } = {},
): Promise<LatencyResult[]> {
  const db = await createTestDatabase();
  const dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-bench-'));
  const coordinator = await startCoordinatorChild({
    databaseUrl: db.url as string,
    dataDir,
    profileDir: process.env.BENCH_PROFILE_DIR,
  });
  const writerDir = options.crossInstance
    ? await mkdtemp(path.join(tmpdir(), 'appproxy-bench-writer-'))
    : undefined;
  const writer = writerDir
    ? await startCoordinatorChild({ databaseUrl: db.url as string, dataDir: writerDir })
    : coordinator;
  const listener = postgres(db.url as string, { max: 1, onnotice: () => {} });
  try {
    await listener.listen('appproxy_changes', (payload) => {
      commits.push({ revision: Number(payload), at: performance.now() });
    });
    const workers = await registerWorkers(coordinator.url, coordinator.tokens.worker);
    const bulk = workers.map(bulkWorker);
    const routes = await insertRoutesSpread(db.url as string, bulk, ROUTES / WORKERS);
    const startedAt = performance.now();
    await Promise.all(workers.map((worker) => worker.connect(coordinator.url, false)));
    const snapshotMs = (performance.now() - startedAt).toFixed(0);
    console.log(`${WORKERS} workers took snapshots of ${routes.length} routes in ${snapshotMs} ms`);
    const figures = await runWrites(writer.url, writer.tokens.manager, workers, routes);
    // Notifications of the last commits may still be on their way.
    await new Promise((resolve) => setTimeout(resolve, 200));
    return figures.map((figure) => ({
      label: figure.label,
      commitToAck: commitToAck(figure),
      requestToAck: figure.toAck,
      requestToResponse: figure.toResponse,
    }));
  } catch (error) {
    console.error(coordinator.output());
    throw error;
  } finally {
    await Promise.all(workersToClose.map((worker) => worker.close()));
    await coordinator.stop();
    if (writer !== coordinator) await writer.stop();
    await listener.end();
    await db.drop();
    for (const dir of [dataDir, writerDir]) if (dir) await rm(dir, { recursive: true, force: true });
  }
}

/** Runs the warm-up, then PATCHes one and 16 at a time, then POSTs one at a time. */
async function runWrites(
  url: string,
  token: string,
  workers: BenchWorker[],
  routes: Route[],
): Promise<LatencyFigures[]> {
  // Each write gets a port never used before, so every PATCH changes its route.
  let nextPort = 1000;
  const patch = (route: Route) => () => {
    const port = nextPort++;
    const backends = [
      { host: '10.9.0.1', port },
      { host: '10.9.0.2', port },
    ];
    return callApi(url, token, 'PATCH', `/routes/${route.id}`, { backends });
  };
  const warmup = newFigures('warm-up');
  for (let i = 0; i < 200; i++) await measure(warmup, routes[i].id, patch(routes[i]));

  const sequential = newFigures('PATCH, one at a time');
  for (let i = 0; i < WRITES; i++) {
    const route = routes[(i * 7919) % routes.length];
    await measure(sequential, route.id, patch(route));
  }
  const concurrent = newFigures(`PATCH, ${CONCURRENCY} at a time`);
  let next = 0;
  const lane = async () => {
    while (next < WRITES * 2) {
      const route = routes[(next++ * 104_729) % routes.length];
      await measure(concurrent, route.id, patch(route));
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, lane));
  const creates = newFigures('POST, one at a time');
  for (let i = 0; i < WRITES / 4; i++) {
    const body = createBody(workers[i % WORKERS].id, i);
    await measure(creates, null, () => callApi(url, token, 'POST', '/routes', body));
  }
  return [sequential, concurrent, creates];
}

const workersToClose: BenchWorker[] = [];

async function registerWorkers(url: string, token: string): Promise<BenchWorker[]> {
  const workers = Array.from({ length: WORKERS }, () => new BenchWorker());
  await Promise.all(
    workers.map((worker, i) =>
      worker.register(url, token, {
        authority: `bench-${i}`,
        frontend_mode: 'wildcard',
        hostname: `bench-${i}.example.test`,
        wildcard_domain: `.w${i}.apps.example.test`,
      }),
    ),
  );
  for (const worker of workers) worker.onArrival = onArrival;
  workersToClose.push(...workers);
  return workers;
}

function bulkWorker(worker: BenchWorker, i: number): BulkWorker {
  return {
    id: worker.id,
    frontendMode: 'wildcard',
    hostname: `bench-${i}.example.test`,
    wildcardDomain: `.w${i}.apps.example.test`,
  };
}

/** Returns a typical create request: two backends, three labels, about 300 bytes of JSON. */
function createBody(workerId: string, i: number) {
  return {
    session_id: `bench-create-${i}`,
    service: 'jupyter',
    worker_id: workerId,
    backends: [
      { host: '10.20.30.40', port: 8888 },
      { host: '10.20.30.41', port: 8888 },
    ],
    labels: { team: 'research', env: 'bench', owner: `user-${i % 97}` },
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const result of await measureLatency()) {
    console.log(`${result.label} (${result.requestToAck.length} writes):`);
    console.log(`  commit → worker ack, ms:     ${summarize(result.commitToAck)}`);
    console.log(`  request → worker ack, ms:    ${summarize(result.requestToAck)}`);
    console.log(`  request → 2xx response, ms:  ${summarize(result.requestToResponse)}`);
  }
}
