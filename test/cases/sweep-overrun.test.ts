import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import postgres from 'postgres';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  CoordinatorProcess,
  HEARTBEAT_MS,
  apiClient,
  connectedWorker,
  eventsSince,
  currentRevision,
  freePort,
  routeBody,
  sleep,
  type Api,
} from './support.ts';

const skip = await postgresSkipReason();

const POOL_SIZE = 4;
/** How long the sweeps are held up: ten heartbeat intervals. */
const HOLD_MS = 10 * HEARTBEAT_MS;

/** Text that marks a statement as part of one kind of periodic job. */
const PERIODIC_STATEMENTS: Record<string, RegExp> = {
  'lost-worker sweep': /GREATEST\(last_heartbeat_at, registered_at\)/,
  'failover sweep': /status IN \('lost', 'deregistered'\)/,
  compaction: /DELETE FROM changes/,
  'heartbeat write': /UPDATE worker_instances wi SET last_heartbeat_at/,
};

interface Sample {
  connections: number;
  perJob: Record<string, number>;
}

// Sweeps that outrun their period never overlap, never take more connections
// than the pool has, and the coordinator responds quickly once they get through.
describe('sweeps that outrun their period', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let api: Api;
  let admin: postgres.Sql;
  const workers: ScriptedWorker[] = [];

  before(async () => {
    db = await createTestDatabase();
    coordinator = new CoordinatorProcess({
      databaseUrl: db.url as string,
      dataDir: db.dataDir,
      port: await freePort(),
      env: { APPPROXY_POOL_SIZE: String(POOL_SIZE) },
    });
    await coordinator.start();
    api = apiClient(() => coordinator.url, coordinator.tokens.manager);
    admin = postgres(db.url as string, { max: 2, onnotice: () => {} });
    const ranges: Array<[number, number]> = [[20000, 20099], [20100, 20199]];
    for (const [i, portRange] of ranges.entries()) {
      workers.push(await connectedWorker(coordinator, { authority: `proxy-${i}`, portRange }));
    }
    for (let i = 0; i < 10; i++) {
      const body = routeBody(`s${i}`, 'jupyter', '192.0.2.140:8080');
      const created = await api('POST', '/routes', body);
      assert.equal(created.status, 201);
    }
  });
  after(async () => {
    for (const worker of workers) worker.kill();
    await admin?.end();
    await coordinator?.stop();
    await db?.drop();
  });

  async function sample(): Promise<Sample> {
    const rows = await admin`
      SELECT query, state FROM pg_stat_activity
      WHERE datname = current_database() AND application_name = 'appproxy-coordinator'`;
    const perJob: Record<string, number> = {};
    for (const [kind, pattern] of Object.entries(PERIODIC_STATEMENTS)) {
      const isRunning = (row: postgres.Row) =>
        row.state === 'active' && pattern.test(String(row.query));
      const running = rows.filter(isRunning);
      perJob[kind] = running.length;
    }
    return { connections: rows.length, perJob };
  }

  test('stalled sweeps neither overlap nor lose workers', async () => {
    const before = await currentRevision(api);
    const samples: Sample[] = [];
    // The workers table lock makes every sweep's first query wait, and with it
    // everything else that reads workers: the sweep outruns its period ten times.
    const holding = admin.begin(async (tx) => {
      await tx`LOCK TABLE workers IN ACCESS EXCLUSIVE MODE`;
      const until = Date.now() + HOLD_MS;
      while (Date.now() < until) {
        samples.push(await sample());
        await sleep(100);
      }
    });
    await holding;
    const releasedAt = Date.now();

    assert.ok(samples.length > 10);
    for (const { perJob, connections } of samples) {
      for (const [kind, count] of Object.entries(perJob)) {
        assert.ok(count <= 1, `${count} of ${kind} at once`);
      }
      // The pool, plus the one connection that LISTENs for changes.
      assert.ok(connections <= POOL_SIZE + 1, `${connections} coordinator connections`);
    }

    let fast = false;
    while (!fast && Date.now() - releasedAt <= 2 * HEARTBEAT_MS) {
      const startedAt = Date.now();
      const health = await api('GET', '/health');
      fast = health.status === 200 && Date.now() - startedAt < 200;
      if (!fast) await sleep(50);
    }
    assert.ok(fast, `GET /health took 200 ms or more for ${2 * HEARTBEAT_MS} ms after the release`);
    await sleep(HEARTBEAT_MS);
    const overran = coordinator.logLines.filter((line) => /overran|skipped/.test(String(line.msg)));
    assert.ok(overran.length >= 1, 'the overrun is logged');

    // Workers kept their sessions and heartbeats throughout: none was lost.
    const lost = (await eventsSince(api, before)).filter((e) => e.type === 'worker.lost');
    assert.deepEqual(lost, []);
    for (const worker of workers) assert.equal(worker.closeCode, null);
  });
});
