import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { pino } from 'pino';
import postgres from 'postgres';
import { WebSocket } from 'ws';
import { parseConfig } from '../../src/coordinator/config.ts';
import { startCoordinator, type Coordinator } from '../../src/coordinator/coordinator.ts';
import { compactChanges } from '../../src/store/changes.ts';
import type { Sql } from '../../src/store/database.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  HEARTBEAT_MS,
  ROOT,
  apiClient,
  connectedWorker,
  currentRevision,
  eventsSince,
  routeBody,
  sleep,
  type Api,
  startCaseCoordinator,
  waitUntil,
} from './support.ts';

const skip = await postgresSkipReason();

/** A client of `GET /events/stream` that records every frame and the close. */
class StreamClient {
  readonly frames: Array<{ event: any; at: number }> = [];
  closeCode: number | null = null;
  closeReason = '';
  readonly #socket: WebSocket;

  constructor(baseUrl: string, token: string, since?: number) {
    const query = since === undefined ? '' : `?since=${since}`;
    this.#socket = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}/events/stream${query}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    this.#socket.on('message', (data) => {
      this.frames.push({ event: JSON.parse(String(data)), at: Date.now() });
    });
    this.#socket.on('close', (code, reason) => {
      this.closeCode = code;
      this.closeReason = String(reason);
    });
  }

  opened(): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#socket.once('open', () => resolve());
      this.#socket.once('error', reject);
    });
  }

  get revisions(): number[] {
    return this.frames.map((frame) => frame.event.revision);
  }

  /** Stops reading the socket, so unread frames back up to the coordinator. */
  pause(): void {
    this.#socket.pause();
  }

  resume(): void {
    this.#socket.resume();
  }

  async close(): Promise<void> {
    if (this.closeCode !== null) return;
    const closed = new Promise((resolve) => this.#socket.once('close', resolve));
    this.#socket.close();
    await closed;
  }
}

/** `appproxy tail --json` as a child process, with its output lines. */
class Tail {
  readonly lines: any[] = [];
  readonly #child: ChildProcess;

  constructor(baseUrl: string, token: string, since: number) {
    const args = ['tail', '--json', '--since', String(since)];
    this.#child = spawn(path.join(ROOT, 'bin', 'appproxy'), args, {
      env: { ...process.env, APPPROXY_COORDINATOR_URL: baseUrl, APPPROXY_READ_TOKEN: token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let rest = '';
    this.#child.stdout?.on('data', (chunk: Buffer) => {
      const parts = (rest + chunk.toString('utf8')).split('\n');
      rest = parts.pop() ?? '';
      for (const part of parts) if (part.trim()) this.lines.push(JSON.parse(part));
    });
    this.#child.stderr?.resume();
  }

  stop(): void {
    this.#child.kill('SIGKILL');
  }
}

/** Makes `count` route changes from `writers` parallel writers: creates, PATCHes, deletes. */
async function churn(api: Api, prefix: string, count: number, writers = 8): Promise<void> {
  let changeCount = 0;
  const lane = async (laneIndex: number) => {
    for (let round = 0; changeCount < count; round++) {
      const session = `${prefix}-${laneIndex}-${round}`;
      const created = await api('POST', '/routes', routeBody(session, 'web', '192.0.2.100:8080'));
      assert.equal(created.status, 201);
      changeCount += 1;
      if (changeCount >= count) return;
      const backends = [{ host: '192.0.2.101', port: 8080 }];
      const patched = await api('PATCH', `/routes/${created.body.id}`, { backends });
      assert.equal(patched.status, 200);
      changeCount += 1;
      if (changeCount >= count || round % 2 === 1) continue;
      assert.equal((await api('DELETE', `/routes/${created.body.id}`)).status, 204);
      changeCount += 1;
    }
  };
  await Promise.all(Array.from({ length: writers }, (_, i) => lane(i)));
}

function summary(event: any): string {
  return `${event.revision} ${event.type} ${event.route?.id ?? event.worker?.id ?? ''}`;
}

// The live event stream delivers every event in revision order, or closes
// with a code that gives the reason. It never skips events silently.
describe('event stream without gaps', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;
  let api: Api;
  let lastSeen = 0;

  before(async () => {
    coordinator = await startCaseCoordinator();
    api = coordinator.api;
    worker = await connectedWorker(coordinator, { authority: 'proxy-w', mode: 'wildcard' });
  });
  after(async () => {
    worker?.kill();
    await coordinator?.stop();
  });

  test('slow subscriber and tail miss nothing', async () => {
    const start = await currentRevision(api);
    const subscriber = new StreamClient(coordinator.url, coordinator.tokens.read, start);
    await subscriber.opened();
    const tail = new Tail(coordinator.url, coordinator.tokens.read, start);
    try {
      // The subscriber reads nothing during 2,000 changes, then catches up.
      subscriber.pause();
      await churn(api, 'slow', 2000);
      const end = await currentRevision(api);
      subscriber.resume();
      const isDone = () => subscriber.revisions.at(-1) === end || subscriber.closeCode !== null;
      await waitUntil('the subscriber caught up or closed', 30_000, isDone);
      const stored = (await eventsSince(api, start)).filter((e) => e.revision <= end);
      const received = subscriber.frames.map((frame) => summary(frame.event));
      if (subscriber.closeCode !== null) {
        assert.equal(subscriber.closeCode, 4429, subscriber.closeReason);
        const lastDelivered = subscriber.revisions.at(-1) ?? start;
        assert.match(subscriber.closeReason, new RegExp(`\\b${lastDelivered}\\b`));
        assert.deepEqual(received, stored.slice(0, received.length).map(summary));
      } else {
        assert.deepEqual(received, stored.map(summary));
      }
      lastSeen = subscriber.revisions.at(-1) ?? start;

      await waitUntil('tail caught up', 30_000, () => tail.lines.at(-1)?.revision === end);
      assert.deepEqual(tail.lines.map(summary), stored.map(summary));
    } finally {
      tail.stop();
      await subscriber.close();
    }
  });

  test('reconnect from last revision misses nothing', async () => {
    await churn(api, 'missed', 500);
    const missedUpTo = await currentRevision(api);
    const missed = (await eventsSince(api, lastSeen)).filter((e) => e.revision <= missedUpTo);
    assert.ok(missed.length >= 500);

    const subscriber = new StreamClient(coordinator.url, coordinator.tokens.read, lastSeen);
    await subscriber.opened();
    const tail = new Tail(coordinator.url, coordinator.tokens.read, lastSeen);
    try {
      await churn(api, 'live', 20, 2);
      const end = await currentRevision(api);
      const isCaughtUp = () => subscriber.revisions.at(-1) === end;
      await waitUntil('the subscriber caught up', 10_000, isCaughtUp);
      const all = (await eventsSince(api, lastSeen)).filter((e) => e.revision <= end);
      assert.deepEqual(
        subscriber.frames.slice(0, missed.length).map((frame) => summary(frame.event)),
        missed.map(summary),
      );
      assert.deepEqual(subscriber.frames.map((frame) => summary(frame.event)), all.map(summary));
      await waitUntil('tail caught up', 10_000, () => tail.lines.at(-1)?.revision === end);
      assert.deepEqual(tail.lines.map(summary), all.map(summary));
    } finally {
      tail.stop();
      await subscriber.close();
    }
  });

  test('compacted since is an explicit error', async () => {
    const first = await api('POST', '/routes', routeBody('edge-1', 'web', '192.0.2.102:8080'));
    const second = await api('POST', '/routes', routeBody('edge-2', 'web', '192.0.2.103:8080'));
    assert.equal((await api('DELETE', `/routes/${first.body.id}`)).status, 204);
    const below = await currentRevision(api);
    assert.equal((await api('DELETE', `/routes/${second.body.id}`)).status, 204);
    const above = await currentRevision(api);

    // Compact exactly through the first delete: the second stays just above the cut.
    const url = coordinator.db.url as string;
    const sql = postgres(url, { max: 1, onnotice: () => {} }) as unknown as Sql;
    try {
      await compactChanges(sql, { maxAgeMs: 86_400_000, maxCount: above - below });
    } finally {
      await sql.end();
    }

    const compacted = await api('GET', `/events?since=${below - 1}`);
    assert.equal(compacted.status, 410);
    assert.equal(compacted.headers.get('content-type'), 'application/problem+json');
    assert.equal(compacted.body.oldest_revision, below + 1);

    const stream = new StreamClient(coordinator.url, coordinator.tokens.read, below - 1);
    await waitUntil('the stream closed', 5000, () => stream.closeCode !== null);
    assert.equal(stream.closeCode, 4410);
    assert.match(stream.closeReason, new RegExp(`\\b${below + 1}\\b`));
    assert.deepEqual(stream.frames, []);

    const keptEvents = await api('GET', `/events?since=${below}`);
    assert.equal(keptEvents.status, 200);
    assert.deepEqual(
      keptEvents.body.events
        .filter((event: any) => event.type === 'route.deleted')
        .map((event: any) => event.route.id),
      [second.body.id],
    );
    const replay = new StreamClient(coordinator.url, coordinator.tokens.read, below);
    await replay.opened();
    await waitUntil('the replay', 5000, () => replay.revisions.includes(above));
    assert.equal(replay.frames[0].event.type, 'route.deleted');
    assert.equal(replay.frames[0].event.route.id, second.body.id);
    await replay.close();
  });

  test('other coordinator streams writes within 1 s', async () => {
    const args = ['--port', '0', '--data-dir', coordinator.db.dataDir, '--log-level', 'silent'];
    const config = parseConfig(args, {
      DATABASE_URL: coordinator.db.url,
      APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
      APPPROXY_MANAGER_TOKEN: coordinator.tokens.manager,
      APPPROXY_READ_TOKEN: coordinator.tokens.read,
      APPPROXY_WORKER_TOKEN: coordinator.tokens.worker,
    });
    const other: Coordinator = await startCoordinator(config, pino({ level: 'silent' }));
    try {
      const start = await currentRevision(api);
      const subscriber = new StreamClient(other.url, coordinator.tokens.read, start);
      await subscriber.opened();
      const writer = apiClient(() => coordinator.url, coordinator.tokens.manager);
      for (let i = 0; i < 20; i++) {
        await writer('POST', '/routes', routeBody(`remote-${i}`, 'web', '192.0.2.104:8080'));
        await sleep(50);
      }
      const end = await currentRevision(api);
      const isCaughtUp = () => subscriber.revisions.at(-1) === end;
      await waitUntil('the remote subscriber caught up', 5000, isCaughtUp);
      const stored = (await eventsSince(api, start)).filter((e) => e.revision <= end);
      assert.deepEqual(subscriber.frames.map((frame) => summary(frame.event)), stored.map(summary));
      for (const frame of subscriber.frames) {
        const lagMs = frame.at - Date.parse(frame.event.at);
        const revision = frame.event.revision;
        assert.ok(lagMs <= 1000, `revision ${revision} arrived ${lagMs} ms after its commit`);
      }
      await subscriber.close();
    } finally {
      await other.close();
    }
  });
});
