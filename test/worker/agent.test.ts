import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { EMPTY_DIGEST, tableDigest } from '../../proto/index.ts';
import {
  Backoff,
  planReconnect,
  WorkerAgent,
  type AgentEvents,
  type AgentOptions,
} from '../../src/worker/agent.ts';
import { InvalidMessageError } from '../../src/worker/errors.ts';
import { RouteTable } from '../../src/worker/table.ts';
import {
  ScriptedCoordinator,
  WORKER_ID,
  WORKER_TOKEN,
  type ScriptedSession,
} from './coordinator.ts';
import { freePort, LOOPBACK, makeRoute, waitFor, withTimeout } from './helpers.ts';

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function startCoordinator(
  options: ConstructorParameters<typeof ScriptedCoordinator>[0] = {},
): Promise<ScriptedCoordinator> {
  const coordinator = await new ScriptedCoordinator(options).start();
  cleanups.push(() => coordinator.close());
  return coordinator;
}

function startAgent(urls: string[], overrides: Partial<AgentOptions> = {}) {
  const table = new RouteTable();
  const errors: Error[] = [];
  const agent = new WorkerAgent({
    coordinatorUrls: urls,
    workerToken: WORKER_TOKEN,
    registration: {
      authority: 'worker-a',
      instance_id: 'instance-1',
      frontend_mode: 'port',
      hostname: LOOPBACK,
      port_range: [20000, 20099],
    },
    table,
    minBackoffMs: 10,
    maxBackoffMs: 50,
    ...overrides,
  });
  agent.on('error', (error) => errors.push(error));
  agent.start();
  cleanups.push(() => withTimeout(agent.close(), 5_000, 'agent close'));
  return { agent, table, errors };
}

/**
 * Resolves with the next `name` event of the agent. Unlike events.once it does not reject on
 * `error` events, which the agent emits for every failed attempt.
 */
function nextEvent<K extends keyof AgentEvents>(
  agent: WorkerAgent,
  name: K,
): Promise<AgentEvents[K][0]> {
  const event = new Promise<AgentEvents[K][0]>((resolve) => {
    const listener = (info: AgentEvents[K][0]) => resolve(info);
    agent.once(name, listener as never);
  });
  return withTimeout(event, 5_000, `${name} event`);
}

/** Plays the coordinator's side up to an acknowledged snapshot of `routes` at `revision`. */
async function openWithSnapshot(
  coordinator: ScriptedCoordinator,
  routes = [makeRoute({ port: 20001 })],
  revision = 5,
): Promise<ScriptedSession> {
  const session = await coordinator.nextSession();
  await session.next('hello');
  const digest = tableDigest(routes);
  session.send({ type: 'snapshot', epoch: coordinator.epoch, revision, routes, digest });
  const ack = await session.next('ack');
  assert.deepEqual(ack, { type: 'ack', revision, digest });
  return session;
}

describe('WorkerAgent', () => {
  test('agent registers with worker token', async () => {
    const coordinator = await startCoordinator();
    const { agent } = startAgent([coordinator.url]);
    const registered = nextEvent(agent, 'registered');

    const registration = await coordinator.nextRegistration();
    assert.equal(registration.authorization, `Bearer ${WORKER_TOKEN}`);
    assert.equal(registration.body.authority, 'worker-a');
    assert.equal(registration.body.instance_id, 'instance-1');
    assert.deepEqual(registration.body.port_range, [20000, 20099]);
    const info = await registered;
    assert.equal(info.workerId, WORKER_ID);
    assert.equal(info.isNew, true);
  });

  test('agent sends hello then acks snapshot', async () => {
    const coordinator = await startCoordinator();
    const { table } = startAgent([coordinator.url]);
    const session = await coordinator.nextSession();

    assert.ok(coordinator.sessionTokens.has(session.token));
    assert.deepEqual(await session.next('hello'), { type: 'hello', protocol_version: 1 });
    const route = makeRoute({ port: 20001 });
    const digest = tableDigest([route]);
    session.send({ type: 'snapshot', epoch: 'epoch-a', revision: 5, routes: [route], digest });
    assert.deepEqual(await session.next('ack'), { type: 'ack', revision: 5, digest });
    assert.equal(table.routeForPort(20001)?.id, route.id);
  });

  test('agent acks snapshot sent in chunks once', async () => {
    const coordinator = await startCoordinator();
    const { table } = startAgent([coordinator.url]);
    const session = await coordinator.nextSession();
    await session.next('hello');
    const routes = [makeRoute({ port: 20001 }), makeRoute({ port: 20002 })];
    const digest = tableDigest(routes);

    const chunk = { type: 'snapshot', epoch: 'epoch-a', revision: 8, digest };
    session.send({ ...chunk, routes: [routes[0]], more: true });
    session.send({ ...chunk, routes: [routes[1]] });
    assert.deepEqual(await session.next('ack'), { type: 'ack', revision: 8, digest });
    assert.equal(table.size, 2);
  });

  test('agent acks diff with new digest', async () => {
    const coordinator = await startCoordinator();
    const { table } = startAgent([coordinator.url]);
    const first = makeRoute({ port: 20001 });
    const session = await openWithSnapshot(coordinator, [first], 5);

    const second = makeRoute({ port: 20002, revision: 6 });
    const digest = tableDigest([first, second]);
    session.send({
      type: 'diff',
      epoch: 'epoch-a',
      from_revision: 5,
      revision: 6,
      upserts: [second],
      removes: [],
      digest,
    });
    assert.deepEqual(await session.next('ack'), { type: 'ack', revision: 6, digest });
    assert.equal(table.revision, 6);
  });

  test('agent nacks diff with wrong digest', async () => {
    const coordinator = await startCoordinator();
    const { agent, table } = startAgent([coordinator.url]);
    const session = await openWithSnapshot(coordinator);
    const mismatch = nextEvent(agent, 'mismatch');

    const diff = { type: 'diff', epoch: 'epoch-a', from_revision: 5, revision: 6 };
    session.send({ ...diff, upserts: [], removes: [], digest: 'e'.repeat(32) });
    const nack = await session.next('nack');
    assert.equal(nack.revision, 6);
    assert.equal(nack.reason, 'digest_mismatch');
    assert.match(String(nack.error), /expected e{32}/);
    assert.equal(table.size, 0);
    const info = await mismatch;
    assert.equal(info.dropped, true);
  });

  test('agent nacks diff from wrong revision', async () => {
    const coordinator = await startCoordinator();
    const { table } = startAgent([coordinator.url]);
    const session = await openWithSnapshot(coordinator);

    const diff = { type: 'diff', epoch: 'epoch-a', from_revision: 3, revision: 6 };
    session.send({ ...diff, upserts: [], removes: [], digest: EMPTY_DIGEST });
    const nack = await session.next('nack');
    assert.equal(nack.reason, 'digest_mismatch');
    assert.equal(table.revision, 5);
  });

  test('agent ignores invalid message', async () => {
    const coordinator = await startCoordinator();
    const { errors } = startAgent([coordinator.url]);
    const session = await coordinator.nextSession();
    await session.next('hello');

    session.send({ type: 'snapshot', epoch: 'epoch-a', revision: 'five' });
    session.socket.send('not json');
    const empty = { epoch: 'epoch-a', revision: 1, routes: [], digest: EMPTY_DIGEST };
    session.send({ type: 'snapshot', ...empty });
    assert.deepEqual(await session.next('ack'), { type: 'ack', revision: 1, digest: EMPTY_DIGEST });
    const invalid = errors.filter((error) => error instanceof InvalidMessageError);
    assert.equal(invalid.length, 2);
    assert.match(invalid[0].message, /revision/);
  });

  test('agent resumes after close 4000', async () => {
    const coordinator = await startCoordinator();
    const { table } = startAgent([coordinator.url]);
    const route = makeRoute({ port: 20001 });
    const first = await openWithSnapshot(coordinator, [route], 5);

    first.close(4000, 'declared lost');
    const second = await coordinator.nextSession();
    assert.equal(second.token, first.token);
    assert.equal(coordinator.registrationCount, 1);
    assert.equal(table.routeForPort(20001)?.id, route.id);
    assert.deepEqual(await second.next('hello'), {
      type: 'hello',
      protocol_version: 1,
      epoch: 'epoch-a',
      applied_revision: 5,
      digest: tableDigest([route]),
    });
  });

  test('agent registers again after 4401', async () => {
    const coordinator = await startCoordinator();
    startAgent([coordinator.url]);
    const first = await openWithSnapshot(coordinator);

    coordinator.sessionTokens.delete(first.token);
    first.close(4401, 'session token unknown');
    const second = await coordinator.nextSession();
    assert.notEqual(second.token, first.token);
    assert.equal(coordinator.registrationCount, 2);
    const hello = await second.next('hello');
    assert.equal(hello.applied_revision, 5);
  });

  test('agent registers again after refused upgrade', async () => {
    const coordinator = await startCoordinator();
    startAgent([coordinator.url]);
    await coordinator.nextRegistration();
    const first = await coordinator.nextSession();
    coordinator.sessionTokens.clear();

    first.close(1012, 'restarting');
    await coordinator.nextRegistration();
    const second = await coordinator.nextSession();
    assert.notEqual(second.token, first.token);
  });

  test('agent stops after 4409', async () => {
    const coordinator = await startCoordinator();
    const { agent } = startAgent([coordinator.url]);
    const session = await openWithSnapshot(coordinator);
    const stopped = nextEvent(agent, 'stopped');

    session.close(4409, 'superseded');
    const info = await stopped;
    assert.equal(info.reason, 'superseded');
    assert.match(info.detail, /instance-1 of worker-a/);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(coordinator.pendingSessions, 0);
    assert.equal(coordinator.registrationCount, 1);
  });

  test('agent stops when registration is invalid', async () => {
    const coordinator = await startCoordinator();
    coordinator.registrationFailure = { status: 400, detail: 'port_range is required' };
    const { agent, errors } = startAgent([coordinator.url]);

    const info = await nextEvent(agent, 'stopped');
    assert.equal(info.reason, 'registration_rejected');
    assert.match(errors[0].message, /returned 400: port_range is required/);
  });

  test('agent retries registration after 503', async () => {
    const coordinator = await startCoordinator();
    coordinator.registrationFailure = { status: 503, detail: 'database unavailable' };
    const { errors } = startAgent([coordinator.url]);
    await coordinator.nextRegistration();
    await coordinator.nextRegistration();

    coordinator.registrationFailure = null;
    await openWithSnapshot(coordinator);
    assert.match(errors[0].message, /returned 503: database unavailable/);
  });

  test('agent sends heartbeats with stats', async () => {
    const coordinator = await startCoordinator({ heartbeatIntervalMs: 50 });
    const activity = { id: makeRoute().id, last_activity_at: new Date().toISOString() };
    const stats = { routes: [activity], connections: 3 };
    startAgent([coordinator.url], { collectStats: () => stats });
    const session = await openWithSnapshot(coordinator);

    const first = await session.next('heartbeat', 2_000);
    const second = await session.next('heartbeat', 2_000);
    assert.equal(first.applied_revision, 5);
    assert.deepEqual(first.stats, stats);
    assert.ok(!Number.isNaN(Date.parse(String(first.sent_at))));
    assert.ok(Date.parse(String(second.sent_at)) >= Date.parse(String(first.sent_at)));
  });

  test('agent moves to next URL when one fails', async () => {
    const deadUrl = `http://${LOOPBACK}:${await freePort()}`;
    const coordinator = await startCoordinator();
    const { agent, errors } = startAgent([deadUrl, coordinator.url]);

    await openWithSnapshot(coordinator);
    assert.equal(agent.coordinatorUrl, coordinator.url);
    assert.match(errors[0].message, /ECONNREFUSED/);
  });

  test('agent resumes on next coordinator after 1012', async () => {
    const sessionTokens = new Set<string>();
    const first = await startCoordinator({ sessionTokens });
    const second = await startCoordinator({ sessionTokens });
    startAgent([first.url, second.url]);
    const session = await openWithSnapshot(first);

    session.close(1012, 'restarting');
    const resumed = await second.nextSession();
    assert.equal(resumed.token, session.token);
    assert.equal((await resumed.next('hello')).applied_revision, 5);
  });

  test('agent keeps table while coordinator is away', async () => {
    const coordinator = await startCoordinator();
    const { agent, table } = startAgent([coordinator.url]);
    await openWithSnapshot(coordinator);
    const disconnected = nextEvent(agent, 'disconnected');

    await coordinator.close();
    await disconnected;
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(table.size, 1);
    assert.equal(table.revision, 5);
  });

  test('agent close stops reconnecting', async () => {
    const coordinator = await startCoordinator();
    const { agent } = startAgent([coordinator.url]);
    const session = await openWithSnapshot(coordinator);

    await withTimeout(agent.close(), 5_000, 'agent close');
    assert.equal(await withTimeout(session.closed, 5_000, 'session close'), 1000);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(coordinator.pendingSessions, 0);
  });

  test('agent reports rejected route', async () => {
    const coordinator = await startCoordinator();
    const { agent } = startAgent([coordinator.url]);
    const session = await openWithSnapshot(coordinator);
    await waitFor(() => agent.reject(5, 'port 20001 is in use'), 1_000, 'open session');

    assert.deepEqual(await session.next('nack'), {
      type: 'nack',
      revision: 5,
      reason: 'rejected',
      error: 'port 20001 is in use',
    });
  });
});

describe('agent reconnect policy', () => {
  test('Backoff doubles to max with full jitter', () => {
    const backoff = new Backoff(100, 1_000, () => 0.999);
    const delays = Array.from({ length: 6 }, () => backoff.next());
    assert.deepEqual(delays, [99, 199, 399, 799, 999, 999]);

    backoff.reset();
    assert.equal(backoff.next(), 99);
    assert.equal(new Backoff(100, 1_000, () => 0).next(), 0);
  });

  test('planReconnect follows close codes', () => {
    const plan = (code: number, upgradeStatus?: number) =>
      planReconnect({ code, reason: '', wasOpen: true, upgradeStatus });

    assert.equal(plan(4000).nextStep, 'resume');
    assert.equal(plan(4000).isRotating, false);
    assert.equal(plan(4401).nextStep, 'register');
    assert.equal(plan(4404).nextStep, 'register');
    assert.equal(plan(4404).isLongWait, true);
    assert.equal(plan(4409).nextStep, 'stop');
    assert.equal(plan(1001).isRotating, true);
    assert.equal(plan(1012).isRotating, true);
    assert.equal(plan(1006).isRotating, true);
    assert.equal(plan(1006, 401).nextStep, 'register');
  });
});
