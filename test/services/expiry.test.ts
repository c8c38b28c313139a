import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import {
  connectedWorker,
  currentRevision,
  eventsOfType,
  eventually,
  routeBody,
} from './helpers.ts';

const skip = await postgresSkipReason();
const HEARTBEAT_MS = 300;
const IDLE_TIMEOUT_S = 3;
/** Idle timeout, plus the activity flush (1 s) and a few sweeps. */
const EXPIRY_DEADLINE_MS = IDLE_TIMEOUT_S * 1000 + 3000;

describe('idle expiry', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator({
      APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
    });
  });
  after(() => coordinator?.stop());

  test('idle routes are deleted, active ones stay', async () => {
    const start = await currentRevision(coordinator);
    const worker = await connectedWorker(coordinator, {
      authority: 'idle',
      portRange: [20000, 20009],
    });
    const create = async (sessionId: string, extra: Record<string, unknown>) =>
      (await coordinator.api('POST', '/routes', routeBody(sessionId, 'web', extra))).body;
    const active = await create('busy', { idle_timeout_s: IDLE_TIMEOUT_S });
    const idle = await create('quiet', { idle_timeout_s: IDLE_TIMEOUT_S });
    const forever = await create('forever', {});

    let reportsActivity = true;
    const reporter = setInterval(() => {
      if (!reportsActivity) return;
      const now = new Date().toISOString();
      worker.send({
        type: 'heartbeat',
        sent_at: now,
        applied_revision: worker.revision,
        stats: { routes: [{ id: active.id, last_activity_at: now }], connections: 1 },
      });
    }, HEARTBEAT_MS);
    try {
      const expired = await eventually('quiet route deleted', EXPIRY_DEADLINE_MS, async () => {
        const deleted = await eventsOfType(coordinator, 'route.deleted', start);
        return deleted.find((event) => event.route.id === idle.id);
      });
      assert.equal(expired.reason, 'idle');
      assert.equal((await coordinator.api('GET', `/routes/${active.id}`)).status, 200);
      assert.equal((await coordinator.api('GET', `/routes/${forever.id}`)).status, 200);
      await worker.waitFor(() => !worker.table.has(idle.id), 3000, 'idle route off the worker');

      reportsActivity = false;
      await eventually('busy route deleted once quiet', EXPIRY_DEADLINE_MS, async () => {
        const response = await coordinator.api('GET', `/routes/${active.id}`);
        return response.status === 404 ? true : undefined;
      });
      const deleted = await eventsOfType(coordinator, 'route.deleted', start);
      assert.deepEqual(
        deleted.map((event) => [event.route.id, event.reason]),
        [
          [idle.id, 'idle'],
          [active.id, 'idle'],
        ],
      );
      assert.equal((await coordinator.api('GET', `/routes/${forever.id}`)).status, 200);
    } finally {
      clearInterval(reporter);
      await worker.close();
    }
  });

  test('a change restarts the idle clock', async () => {
    const worker = await connectedWorker(coordinator, {
      authority: 'idle-patch',
      portRange: [21000, 21009],
    });
    const body = routeBody('patched', 'web', {
      idle_timeout_s: IDLE_TIMEOUT_S,
      worker_id: worker.id,
    });
    const route = (await coordinator.api('POST', '/routes', body)).body;
    await new Promise((resolve) => setTimeout(resolve, (IDLE_TIMEOUT_S - 1) * 1000));
    await coordinator.api('PATCH', `/routes/${route.id}`, { labels: { touched: 'yes' } });
    await new Promise((resolve) => setTimeout(resolve, 2000));
    assert.equal((await coordinator.api('GET', `/routes/${route.id}`)).status, 200);
    await eventually('patched route deleted later', EXPIRY_DEADLINE_MS, async () => {
      const response = await coordinator.api('GET', `/routes/${route.id}`);
      return response.status === 404 ? true : undefined;
    });
    await worker.close();
  });
});
