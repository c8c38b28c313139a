// Measures 1,000 workers reconnecting at once, holding 50 routes each: after
// their connections drop (they resume with a diff), after they restart (each
// takes a snapshot), and after the coordinator restarts. Reports the time
// until every worker has applied its reply and acked it, and the
// coordinator's peak memory against its steady state with every session
// open. PostgreSQL of the test suites, coordinator in its own process.
// Stops by itself and prints its numbers.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { insertRoutesSpread } from '../test/helpers/bulk-routes.ts';
import { createTestDatabase } from '../test/helpers/database.ts';
import { BenchWorker, startCoordinatorChild, type CoordinatorChild } from './sync-support.ts';

const WORKERS = Number(process.env.BENCH_WORKERS ?? 1000);
const ROUTES_PER_WORKER = Number(process.env.BENCH_ROUTES_PER_WORKER ?? 50);
const MIB = 2 ** 20;

export interface StormFigures {
  scenario: string;
  convergedMs: number;
  steadyMiB: number;
  peakMiB: number;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Connects every worker at once; resolves with the time until all are in sync. */
async function connectAll(workers: BenchWorker[], url: string, resume: boolean): Promise<number> {
  const startedAt = performance.now();
  await Promise.all(workers.map((worker) => worker.connect(url, resume)));
  return performance.now() - startedAt;
}

/** Drops every connection, reconnects all at once, and measures time and memory. */
async function storm(
  scenario: string,
  coordinator: CoordinatorChild,
  workers: BenchWorker[],
  resume: boolean,
): Promise<StormFigures> {
  await sleep(2000);
  const steady = (await coordinator.memory()).residentBytes;
  for (const worker of workers) worker.kill();
  await sleep(500);
  await coordinator.resetPeak();
  const convergedMs = await connectAll(workers, coordinator.url, resume);
  const { peakBytes } = await coordinator.memory();
  return { scenario, convergedMs, steadyMiB: steady / MIB, peakMiB: peakBytes / MIB };
}

export async function measureStorms(): Promise<StormFigures[]> {
  const db = await createTestDatabase();
  const dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-bench-'));
  const env = { APPPROXY_HEARTBEAT_INTERVAL_MS: '10000' };
  const profileDir = process.env.BENCH_PROFILE_DIR;
  const start = () => {
    return startCoordinatorChild({ databaseUrl: db.url as string, dataDir, env, profileDir });
  };
  let coordinator = await start();
  const workers = Array.from({ length: WORKERS }, () => new BenchWorker());
  try {
    for (let i = 0; i < WORKERS; i += 50) {
      await Promise.all(
        workers.slice(i, i + 50).map((worker, j) =>
          worker.register(coordinator.url, coordinator.tokens.worker, {
            authority: `storm-${i + j}`,
            frontend_mode: 'wildcard',
            hostname: `storm-${i + j}.example.test`,
            wildcard_domain: `.s${i + j}.apps.example.test`,
          }),
        ),
      );
    }
    const bulk = workers.map((worker, i) => ({
      id: worker.id,
      frontendMode: 'wildcard' as const,
      hostname: `storm-${i}.example.test`,
      wildcardDomain: `.s${i}.apps.example.test`,
    }));
    await insertRoutesSpread(db.url as string, bulk, ROUTES_PER_WORKER);
    const firstMs = await connectAll(workers, coordinator.url, false);
    console.log(`${WORKERS} workers connected the first time in ${firstMs.toFixed(0)} ms`);

    const results = [
      await storm('connections drop, workers resume', coordinator, workers, true),
      await storm('workers restart, each takes a snapshot', coordinator, workers, false),
    ];
    await coordinator.stop();
    coordinator = await start();
    await sleep(500);
    await coordinator.resetPeak();
    const convergedMs = await connectAll(workers, coordinator.url, true);
    const { peakBytes } = await coordinator.memory();
    await sleep(2000);
    const steady = (await coordinator.memory()).residentBytes;
    results.push({
      scenario: 'coordinator restarts, workers resume',
      convergedMs,
      steadyMiB: steady / MIB,
      peakMiB: peakBytes / MIB,
    });
    return results;
  } finally {
    for (const worker of workers) worker.kill();
    await coordinator.stop();
    await db.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  for (const figures of await measureStorms()) {
    console.log(`${figures.scenario}:`);
    console.log(`  all ${WORKERS} in sync after ${figures.convergedMs.toFixed(0)} ms`);
    const ratio = (figures.peakMiB / figures.steadyMiB).toFixed(2);
    const steady = figures.steadyMiB.toFixed(0);
    const peak = figures.peakMiB.toFixed(0);
    console.log(`  coordinator memory: steady ${steady} MiB, peak ${peak} MiB (${ratio}×)`);
  }
}
