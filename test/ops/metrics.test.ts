import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { isEmbeddedRun, postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = isEmbeddedRun ? undefined : await postgresSkipReason();

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format into samples; comments and blank lines are skipped. */
function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels: Record<string, string> = {};
    for (const [, key, value] of (match[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) {
      labels[key] = value;
    }
    samples.push({ name: match[1], labels, value: Number(match[3]) });
  }
  return samples;
}

/** Returns the value of the one sample with `name` whose labels include `labels`. */
function valueOf(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const found = samples.filter(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );
  const what = `${name} ${JSON.stringify(labels)}`;
  assert.equal(found.length, 1, `expected one ${what}, found ${found.length}`);
  return found[0].value;
}

async function scrape(coordinator: TestCoordinator): Promise<Sample[]> {
  const response = await fetch(`${coordinator.url}/metrics`, {
    headers: { authorization: `Bearer ${coordinator.tokens.read}` },
  });
  assert.equal(response.status, 200);
  return parseSamples(await response.text());
}

/** Scrapes until `predicate` holds; fails after `timeoutMs`. */
async function scrapeUntil(
  coordinator: TestCoordinator,
  what: string,
  predicate: (samples: Sample[]) => boolean,
  timeoutMs = 5000,
): Promise<Sample[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const samples = await scrape(coordinator);
    if (predicate(samples)) return samples;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Waits until the worker's acknowledged revision is stored; fails after 5 s. */
async function waitForApplied(coordinator: TestCoordinator, workerId: string, revision: number) {
  const deadline = Date.now() + 5000;
  while ((await coordinator.api('GET', `/workers/${workerId}`)).body.applied_revision < revision) {
    if (Date.now() > deadline) assert.fail(`worker never acknowledged revision ${revision}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

const has = (samples: Sample[], name: string, labels: Record<string, string> = {}) =>
  samples.some(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(([key, value]) => sample.labels[key] === value),
  );

describe('metrics endpoint', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  let routeId: string;

  before(async () => {
    coordinator = await startTestCoordinator();
    worker = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: coordinator.tokens.worker,
    });
    await worker.register();
    await worker.connect();
    const created = await coordinator.api('POST', '/routes?wait=applied&timeout_ms=5000', {
      session_id: 'metrics-session',
      service: 'jupyter',
      backends: [{ host: '127.0.0.1', port: 8888 }],
    });
    assert.equal(created.status, 201);
    routeId = created.body.id;
  });

  after(async () => {
    await worker?.close();
    await coordinator?.stop();
  });

  test('metrics need a manager or read token', async () => {
    const read = await fetch(`${coordinator.url}/metrics`, {
      headers: { authorization: `Bearer ${coordinator.tokens.manager}` },
    });
    assert.equal(read.status, 200);
    assert.match(read.headers.get('content-type') ?? '', /^text\/plain/);
    const asWorker = await coordinator.api('GET', '/metrics', undefined, coordinator.tokens.worker);
    assert.equal(asWorker.status, 403);
  });

  test('snapshot and diff are counted with bytes', async () => {
    const samples = await scrape(coordinator);
    const name = 'appproxy_worker_messages_sent_total';
    assert.ok(valueOf(samples, name, { type: 'snapshot' }) >= 1);
    assert.ok(valueOf(samples, name, { type: 'diff' }) >= 1);
    assert.ok(valueOf(samples, 'appproxy_worker_sent_bytes_total', { type: 'diff' }) > 100);
  });

  test('commit-to-ack latency is observed', async () => {
    const samples = await scrape(coordinator);
    assert.ok(valueOf(samples, 'appproxy_change_propagation_seconds_count') >= 1);
    const sum = valueOf(samples, 'appproxy_change_propagation_seconds_sum');
    assert.ok(sum > 0, `sum ${sum}`);
    assert.ok(sum < 5, `sum ${sum}`);
  });

  test('workers and routes by status', async () => {
    const samples = await scrape(coordinator);
    assert.equal(valueOf(samples, 'appproxy_workers', { status: 'alive' }), 1);
    assert.equal(valueOf(samples, 'appproxy_workers', { status: 'lost' }), 0);
    assert.equal(valueOf(samples, 'appproxy_routes', { status: 'active' }), 1);
    assert.equal(valueOf(samples, 'appproxy_routes', { status: 'pending' }), 0);
    assert.equal(valueOf(samples, 'appproxy_database_up'), 1);
  });

  test('per-worker lag and heartbeats', async () => {
    const samples = await scrape(coordinator);
    const labels = { worker_id: worker.id, authority: 'proxy-a' };
    assert.equal(valueOf(samples, 'appproxy_worker_lag_revisions', labels), 0);
    assert.equal(valueOf(samples, 'appproxy_worker_lag_seconds', labels), 0);
    assert.ok(valueOf(samples, 'appproxy_worker_missed_heartbeats', labels) <= 1);
  });

  test('lag shows while a worker has not acknowledged', async () => {
    const lagging = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: coordinator.tokens.worker,
      authority: 'proxy-lagging',
      portRange: [22000, 22010],
      autoAck: false,
    });
    await lagging.register();
    await lagging.connect();
    await lagging.waitFor(() => lagging.epoch !== '', 5000, 'the snapshot');
    lagging.ack();
    const ackedRevision = lagging.revision;
    await waitForApplied(coordinator, lagging.id, ackedRevision);
    try {
      const created = await coordinator.api('POST', '/routes', {
        session_id: 'metrics-lag',
        service: 'web',
        worker_id: lagging.id,
        backends: [{ host: '127.0.0.1', port: 8080 }],
      });
      assert.equal(created.status, 201);
      const labels = { worker_id: lagging.id, authority: 'proxy-lagging' };
      const samples = await scrapeUntil(coordinator, 'a lagging worker', (current) =>
        has(current, 'appproxy_worker_lag_revisions', labels) &&
        valueOf(current, 'appproxy_worker_lag_revisions', labels) > 0,
      );
      const lagRevisions = valueOf(samples, 'appproxy_worker_lag_revisions', labels);
      assert.equal(lagRevisions, created.body.revision - ackedRevision);
      assert.ok(valueOf(samples, 'appproxy_worker_lag_seconds', labels) > 0);
      assert.equal(valueOf(samples, 'appproxy_routes', { status: 'pending' }), 1);
    } finally {
      await lagging.close();
    }
  });

  test('HTTP requests by route template', async () => {
    await coordinator.api('GET', `/routes/${routeId}`);
    await coordinator.api('GET', '/no-such-endpoint');
    const samples = await scrape(coordinator);
    const name = 'appproxy_http_request_duration_seconds_count';
    assert.ok(valueOf(samples, name, { method: 'POST', route: '/routes', status: '201' }) >= 1);
    assert.ok(valueOf(samples, name, { method: 'GET', route: '/routes/:id', status: '200' }) >= 1);
    assert.equal(valueOf(samples, name, { method: 'GET', route: 'unmatched', status: '404' }), 1);
    assert.ok(!samples.some((sample) => sample.labels.route?.includes(routeId)));
  });

  test('pool, batches and sessions', async () => {
    const samples = await scrape(coordinator);
    assert.ok(valueOf(samples, 'appproxy_db_pool_connections', { state: 'busy' }) >= 0);
    assert.ok(valueOf(samples, 'appproxy_db_pool_connections', { state: 'idle' }) >= 0);
    assert.ok(valueOf(samples, 'appproxy_db_pool_max_connections') >= 1);
    assert.equal(valueOf(samples, 'appproxy_db_pool_waiting'), 0);
    assert.ok(valueOf(samples, 'appproxy_write_batch_jobs_count') >= 1);
    assert.equal(valueOf(samples, 'appproxy_worker_sessions'), 1);
    assert.ok(valueOf(samples, 'appproxy_worker_send_queue_bytes') >= 0);
    assert.ok(has(samples, 'process_resident_memory_bytes'));
  });

  test('nacks by reason', async () => {
    worker.send({ type: 'nack', revision: worker.revision, reason: 'rejected', error: 'in use' });
    const samples = await scrapeUntil(coordinator, 'a counted nack', (current) =>
      has(current, 'appproxy_worker_nacks_total', { reason: 'rejected' }),
    );
    assert.equal(valueOf(samples, 'appproxy_worker_nacks_total', { reason: 'rejected' }), 1);
  });

  test('event stream subscribers', async () => {
    const before = valueOf(await scrape(coordinator), 'appproxy_event_stream_subscribers');
    const socket = new WebSocket(`${coordinator.url.replace(/^http/, 'ws')}/events/stream`, {
      headers: { authorization: `Bearer ${coordinator.tokens.read}` },
    });
    await new Promise((resolve, reject) => {
      socket.once('open', resolve);
      socket.once('error', reject);
    });
    try {
      const samples = await scrape(coordinator);
      assert.equal(valueOf(samples, 'appproxy_event_stream_subscribers'), before + 1);
    } finally {
      socket.close();
    }
  });
});

describe('metrics of lost workers and failover', { skip }, () => {
  let coordinator: TestCoordinator;
  const workers: ScriptedWorker[] = [];

  before(async () => {
    coordinator = await startTestCoordinator({
      APPPROXY_HEARTBEAT_INTERVAL_MS: '200',
      APPPROXY_HEARTBEAT_MISSES: '3',
    });
  });

  after(async () => {
    for (const worker of workers) await worker.close();
    await coordinator?.stop();
  });

  test('lost worker, moved route and close code are counted', async () => {
    const options = { coordinatorUrl: coordinator.url, workerToken: coordinator.tokens.worker };
    const healthy = new ScriptedWorker({ ...options, authority: 'healthy' });
    const silent = new ScriptedWorker({ ...options, authority: 'silent', heartbeats: false });
    workers.push(healthy, silent);
    await healthy.register();
    await healthy.connect();
    await silent.register();
    await silent.connect();
    const created = await coordinator.api('POST', '/routes', {
      session_id: 'metrics-failover',
      service: 'web',
      worker_id: silent.id,
      backends: [{ host: '127.0.0.1', port: 8080 }],
    });
    assert.equal(created.status, 201);

    const samples = await scrapeUntil(coordinator, 'a lost worker and a moved route', (current) =>
      has(current, 'appproxy_routes_failed_over_total') &&
      valueOf(current, 'appproxy_routes_failed_over_total') >= 1,
    );
    assert.equal(valueOf(samples, 'appproxy_workers_lost_total'), 1);
    assert.equal(valueOf(samples, 'appproxy_routes_failed_over_total'), 1);
    assert.equal(valueOf(samples, 'appproxy_worker_session_closes_total', { code: '4000' }), 1);
    assert.equal(valueOf(samples, 'appproxy_workers', { status: 'lost' }), 1);
  });
});

describe('metrics while the database is gone', { skip }, () => {
  test('scrape reports database_up 0', async () => {
    const coordinator = await startTestCoordinator();
    try {
      assert.equal(valueOf(await scrape(coordinator), 'appproxy_database_up'), 1);
      // Dropping the database ends every connection of the coordinator and keeps it from
      // reconnecting, as an outage would.
      await coordinator.db.drop();
      const samples = await scrape(coordinator);
      assert.equal(valueOf(samples, 'appproxy_database_up'), 0);
      assert.ok(!has(samples, 'appproxy_workers'));
      assert.ok(has(samples, 'appproxy_worker_sessions'));
    } finally {
      await coordinator.close();
    }
  });
});
