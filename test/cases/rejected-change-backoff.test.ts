import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  CoordinatorProcess,
  HEARTBEAT_MS,
  ROOT,
  apiClient,
  connectedWorker,
  eventually,
  routeBody,
  sleep,
  type Api,
} from './support.ts';

const skip = await postgresSkipReason();
const run = promisify(execFile);

/** How long the rejected route is watched: 30 heartbeat intervals. */
const WATCH_MS = 30 * HEARTBEAT_MS;

function carriesPort9(message: Record<string, any>): boolean {
  const routes: any[] = message.type === 'snapshot' ? message.routes : message.upserts;
  return routes.some((route) => route.backends.some((backend: any) => backend.port === 9));
}

function carries(message: Record<string, any>, id: string): boolean {
  if (message.type === 'snapshot') return message.routes.some((route: any) => route.id === id);
  if (message.type === 'diff') return message.upserts.some((route: any) => route.id === id);
  return false;
}

// A worker that rejects a route gets it again only after a growing backoff,
// the rejection shows in status and the log, and a fixed route goes out at once.
describe('rejected change backoff', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let api: Api;
  let rejecting: ScriptedWorker;
  let healthy: ScriptedWorker;
  let rejected: any;
  /** Arrival time of every snapshot and diff the rejecting worker got. */
  const received: Array<{ at: number; message: Record<string, any> }> = [];
  const arrivalsOf = (id: string) =>
    received.filter((item) => carries(item.message, id)).map((item) => item.at);
  let arrivals: number[] = [];

  before(async () => {
    db = await createTestDatabase();
    coordinator = await CoordinatorProcess.on(db);
    await coordinator.start();
    api = apiClient(() => coordinator.url, coordinator.tokens.manager);
    rejecting = await connectedWorker(coordinator, {
      authority: 'proxy-a',
      reject: (message) => {
        received.push({ at: Date.now(), message });
        return carriesPort9(message) ? 'port 9 refused' : undefined;
      },
    });
    const range: [number, number] = [21000, 21999];
    healthy = await connectedWorker(coordinator, { authority: 'proxy-b', portRange: range });
  });
  after(async () => {
    rejecting?.kill();
    healthy?.kill();
    await coordinator?.stop();
    await db?.drop();
  });

  async function status(): Promise<string> {
    const { stdout } = await run(path.join(ROOT, 'bin', 'appproxy'), ['status'], {
      env: {
        ...process.env,
        APPPROXY_COORDINATOR_URL: coordinator.url,
        APPPROXY_READ_TOKEN: coordinator.tokens.read,
        NO_COLOR: '1',
      },
    });
    return stdout;
  }

  test('rejected route resent with growing backoff', async () => {
    const created = await api('POST', '/routes', {
      session_id: 's1',
      service: 'svc',
      worker_id: rejecting.id,
      backends: [{ host: '192.0.2.40', port: 9 }],
    });
    assert.equal(created.status, 201);
    rejected = created.body;
    const watchStart = Date.now();

    const otherBody = routeBody('s2', 'svc', '192.0.2.41:8080', { worker_id: healthy.id });
    const other = await api('POST', '/routes', otherBody);
    assert.equal(other.status, 201);
    await eventually('the other worker route active', 1000, async () => {
      const route = await api('GET', `/routes/${other.body.id}`);
      return route.body.status === 'active' ? true : undefined;
    });

    await sleep(WATCH_MS - (Date.now() - watchStart));
    arrivals = arrivalsOf(rejected.id);
    assert.ok(arrivals.length >= 2, `resent at least once, got ${arrivals.length}`);
    assert.ok(arrivals.length <= 5, `at most 5 sends in ${WATCH_MS} ms, got ${arrivals.length}`);
    const gaps = arrivals.slice(1).map((at, i) => at - arrivals[i]);
    assert.ok(gaps[0] >= 900, `first gap is at least the first backoff: ${gaps.join(', ')} ms`);
    for (let i = 1; i < gaps.length; i++) {
      assert.ok(gaps[i] >= gaps[i - 1], `gaps never shrink: ${gaps.join(', ')}`);
    }

    const route = await api('GET', `/routes/${rejected.id}`);
    assert.equal(route.body.status, 'pending');
    const worker = await api('GET', `/workers/${rejecting.id}`);
    assert.ok(worker.body.applied_revision < rejected.revision);
    assert.equal(worker.body.last_nack.reason, 'rejected');
    assert.equal(worker.body.last_nack.error, 'port 9 refused');
    assert.ok(worker.body.last_nack.revision >= rejected.revision);
  });

  test('status and log show the rejection', async () => {
    const worker = await api('GET', `/workers/${rejecting.id}`);
    const text = await status();
    const line = text.split('\n').find((row) => row.startsWith('proxy-a'));
    assert.ok(line, text);
    assert.match(line, /port 9 refused/);
    assert.match(line, new RegExp(`r${worker.body.last_nack.revision} rejected`));

    const logged = coordinator.logLines.filter(
      (entry) => entry.msg === 'worker rejected a change' && entry.worker_id === rejecting.id,
    );
    assert.ok(logged.length >= 1, 'the nack is logged');
    assert.ok(logged.every((entry) => typeof entry.revision === 'number'));
    const message = `${logged.length} log lines for ${arrivals.length} nacks`;
    assert.ok(logged.length < arrivals.length, message);
  });

  test('fixed route goes out at once', async () => {
    const sent = arrivalsOf(rejected.id).length;
    const fixedAt = Date.now();
    const backends = [{ host: '192.0.2.40', port: 8080 }];
    const fixed = await api('PATCH', `/routes/${rejected.id}`, { backends });
    assert.equal(fixed.status, 200);
    const hasFix = () => rejecting.table.get(rejected.id)?.revision === fixed.body.revision;
    await rejecting.waitFor(hasFix, 1000, 'the fix');
    assert.ok(Date.now() - fixedAt <= 1000);
    assert.ok(arrivalsOf(rejected.id).length > sent);
    await eventually('the route active', 2000, async () => {
      const route = await api('GET', `/routes/${rejected.id}`);
      return route.body.status === 'active' ? true : undefined;
    });
    const worker = await api('GET', `/workers/${rejecting.id}`);
    assert.equal(worker.body.last_nack, null);
    const line = (await status()).split('\n').find((row) => row.startsWith('proxy-a'));
    assert.doesNotMatch(line ?? '', /refused/);
  });
});
