import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import postgres from 'postgres';
import type { Route } from '../../proto/index.ts';
import type { Sql } from '../../src/store/database.ts';
import { Writer, type WriteTx } from '../../src/store/writer.ts';
import { typicalRoute, type BulkWorker } from '../helpers/bulk-routes.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  sleep,
  tableMessages,
  waitInSync,
  startCaseCoordinator,
  waitUntil,
} from './support.ts';

const skip = await postgresSkipReason();

const SESSION_COUNT = 2000;
const ROUTES_PER_SESSION = 5;
const IN_FLIGHT = 50;

/**
 * Creates SESSION_COUNT sessions of ROUTES_PER_SESSION routes, spread over
 * `workers`, through the coordinator's own group-commit writer: each route
 * takes a revision and a change-log row as a REST create would.
 */
async function insertSessions(databaseUrl: string, workers: BulkWorker[]): Promise<void> {
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} }) as unknown as Sql;
  const writer = new Writer(sql, { maxBatch: 1, timeoutMs: 120_000, onCommit: () => {} });
  try {
    const total = SESSION_COUNT * ROUTES_PER_SESSION;
    for (let start = 0; start < total; start += 5000) {
      await writer.run((tx) => insertBatch(tx, workers, start, Math.min(total, start + 5000)));
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
}

async function insertBatch(
  tx: WriteTx,
  workers: BulkWorker[],
  from: number,
  to: number,
): Promise<void> {
  const now = tx.now.toISOString();
  const routes: Route[] = [];
  for (let index = from; index < to; index++) {
    const worker = workers[index % workers.length];
    const route = typicalRoute(worker, index, tx.revision + routes.length + 1, now);
    const sessionId = `end-${Math.floor(index / ROUTES_PER_SESSION)}`;
    routes.push({ ...route, session_id: sessionId, service: `svc-${index % ROUTES_PER_SESSION}` });
  }
  const rows = routes.map(({ status: _status, ...row }) => row);
  await tx.sql`
    INSERT INTO routes
    SELECT * FROM jsonb_populate_recordset(NULL::routes, ${JSON.stringify(rows)}::text::jsonb)`;
  for (const route of routes) {
    tx.record({
      type: 'route.created',
      route_id: route.id,
      session_id: route.session_id,
      worker_id: route.worker_id,
      route,
    });
  }
}

// Ending thousands of sessions at once empties REST and every worker table,
// with contiguous diffs, while the coordinator keeps responding quickly.
describe('bulk session end', { skip }, () => {
  let coordinator: TestCoordinator;
  const workers: ScriptedWorker[] = [];

  before(async () => {
    coordinator = await startCaseCoordinator();
    for (const name of ['w1', 'w2']) {
      const options = { authority: `proxy-${name}`, wildcardDomain: `.${name}.example.test` };
      workers.push(await connectedWorker(coordinator, { ...options, mode: 'wildcard' }));
    }
    const bulk = workers.map((worker) => ({
      id: worker.id,
      frontendMode: 'wildcard' as const,
      hostname: 'proxy.example.test',
      wildcardDomain: worker.options.wildcardDomain,
    }));
    await insertSessions(coordinator.db.url as string, bulk);
    for (const worker of workers) await waitInSync(coordinator.api, worker.id, 30_000);
  });
  after(async () => {
    for (const worker of workers) worker.kill();
    await coordinator?.stop();
  });

  test('ending every session empties all tables', async () => {
    const total = SESSION_COUNT * ROUTES_PER_SESSION;
    for (const worker of workers) assert.equal(worker.table.size, total / workers.length);
    const marks = workers.map((worker) => worker.messages.length);
    const revisions = workers.map((worker) => worker.revision);

    const healthMs: number[] = [];
    let isEnding = true;
    const watchHealth = (async () => {
      while (isEnding) {
        const startedAt = Date.now();
        const health = await coordinator.api('GET', '/health');
        assert.equal(health.status, 200);
        healthMs.push(Date.now() - startedAt);
        await sleep(100);
      }
    })();

    const startedAt = Date.now();
    let next = 0;
    const lane = async () => {
      while (next < SESSION_COUNT) {
        const response = await coordinator.api('DELETE', `/sessions/end-${next++}/routes`);
        assert.equal(response.status, 200);
        assert.deepEqual(response.body, { deleted: ROUTES_PER_SESSION });
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, lane));
    try {
      const isEmpty = () => workers.every((worker) => worker.table.size === 0);
      await waitUntil('every worker table empty', 30_000 - (Date.now() - startedAt), isEmpty);
    } finally {
      isEnding = false;
      await watchHealth;
    }

    const listed = await coordinator.api('GET', '/routes?limit=1');
    assert.deepEqual(listed.body.routes, []);
    assert.ok(healthMs.length > 0);
    assert.ok(Math.max(...healthMs) < 200, `GET /health took up to ${Math.max(...healthMs)} ms`);
    for (const [i, worker] of workers.entries()) {
      let previous = revisions[i];
      for (const message of tableMessages(worker, marks[i])) {
        assert.equal(message.type, 'diff');
        const name = worker.options.authority;
        assert.equal(message.from_revision, previous, `${name}: contiguous diffs`);
        previous = message.revision;
      }
    }
  });
});
