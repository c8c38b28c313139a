// Measures a snapshot of 100,000 routes: the time from hello until the worker
// has applied the last chunk and sent its ack, the bytes on the wire, and the
// coordinator's peak memory. It runs on the PostgreSQL of the test suites,
// against a coordinator in its own process, stops by itself and prints its numbers.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { insertRoutes } from '../test/helpers/bulk-routes.ts';
import { createTestDatabase } from '../test/helpers/database.ts';
import { BenchWorker, startCoordinatorChild } from './sync-support.ts';
import { spread, type Spread } from './support.ts';

const ROUTES = Number(process.env.BENCH_ROUTES ?? 100_000);
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const MIB = 2 ** 20;

export interface SnapshotFigures {
  routes: number;
  helloToAckMs: Spread;
  megabytes: number;
  messages: number;
  baselineMiB: number;
  peakMiB: Spread;
}

export async function measureSnapshot(): Promise<SnapshotFigures> {
  const db = await createTestDatabase();
  const dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-bench-'));
  const coordinator = await startCoordinatorChild({
    databaseUrl: db.url as string,
    dataDir,
    profileDir: process.env.BENCH_PROFILE_DIR,
  });
  const worker = new BenchWorker();
  try {
    await worker.register(coordinator.url, coordinator.tokens.worker, {
      authority: 'bench-snapshot',
      frontend_mode: 'wildcard',
      hostname: 'bench.example.test',
      wildcard_domain: '.apps.example.test',
    });
    const bulk = {
      id: worker.id,
      frontendMode: 'wildcard' as const,
      hostname: 'h',
      wildcardDomain: '.apps.example.test',
    };
    await insertRoutes(db.url as string, bulk, ROUTES);
    const times: number[] = [];
    const peaks: number[] = [];
    let messages = 0;
    let bytes = 0;
    const baseline = (await coordinator.memory()).residentBytes;
    for (let run = 0; run < RUNS; run++) {
      await coordinator.resetPeak();
      worker.bytesReceived = 0;
      worker.messagesReceived = 0;
      const startedAt = performance.now();
      await worker.connect(coordinator.url, false);
      times.push(performance.now() - startedAt);
      bytes = worker.bytesReceived;
      messages = worker.messagesReceived;
      peaks.push((await coordinator.memory()).peakBytes / MIB);
      if (worker.table.size !== ROUTES) {
        throw new Error(`worker has ${worker.table.size} routes, expected ${ROUTES}`);
      }
      await worker.close();
    }
    return {
      routes: ROUTES,
      helloToAckMs: spread(times),
      megabytes: bytes / MIB,
      messages,
      baselineMiB: baseline / MIB,
      peakMiB: spread(peaks),
    };
  } finally {
    await worker.close();
    await coordinator.stop();
    await db.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const figures = await measureSnapshot();
  console.log(`snapshot of ${figures.routes} routes, ${RUNS} runs:`);
  const { median, min, max } = figures.helloToAckMs;
  console.log(`  hello → ack, ms: ${median.toFixed(0)} (${min.toFixed(0)}–${max.toFixed(0)})`);
  console.log(`  ${figures.megabytes.toFixed(1)} MiB in ${figures.messages} messages`);
  const before = figures.baselineMiB.toFixed(0);
  const peak = figures.peakMiB.median.toFixed(0);
  console.log(`  coordinator memory: ${before} MiB before, peak ${peak} MiB`);
}
