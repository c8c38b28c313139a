import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { startSampleBackend, type SampleBackend } from '../../src/demo/backend.ts';
import { createTestDatabase, isEmbeddedRun, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import { freePort, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/processes.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const HEARTBEAT_MS = 500;
// Several coordinators need one shared PostgreSQL; the embedded database serves one process.
const skip = isEmbeddedRun ? 'several coordinators need PostgreSQL' : await postgresSkipReason();

async function eventually<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe('three coordinators on one database', { skip }, () => {
  let db: TestDatabase;
  const dataDirs: string[] = [];
  const coordinators: CoordinatorProcess[] = [];
  const workers: ChildProcess[] = [];
  let backend: SampleBackend;
  let token: string;

  before(async () => {
    db = await createTestDatabase();
    for (let i = 0; i < 3; i++) {
      const dataDir = i === 0 ? db.dataDir : await mkdtemp(path.join(tmpdir(), 'appproxy-multi-'));
      if (i > 0) dataDirs.push(dataDir);
      const env = { APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS), APPPROXY_LOG_LEVEL: 'warn' };
      coordinators.push(await startCoordinatorProcess({ databaseUrl: db.url, dataDir, env }));
    }
    const tokens = await coordinators[0].tokens();
    token = tokens.manager;
    backend = await startSampleBackend({ host: '127.0.0.1', port: 0 });
    for (let i = 0; i < 3; i++) {
      // Each worker lists the coordinators starting from a different one, so they spread out.
      const urls = [0, 1, 2].map((k) => coordinators[(i + k) % 3].url).join(',');
      const first = await freePort();
      workers.push(spawn(path.join(ROOT, 'bin', 'appproxy-worker'), [
        '--authority', `multi-${i}`, '--port-range', `${first}-${first + 1}`, '--log-level', 'warn',
      ], {
        env: { ...process.env, APPPROXY_COORDINATOR_URL: urls, APPPROXY_WORKER_TOKEN: tokens.worker },
        stdio: 'ignore',
      }));
    }
  });
  after(async () => {
    for (const worker of workers) worker.kill('SIGTERM');
    for (const coordinator of coordinators) coordinator.child.kill('SIGKILL');
    await backend?.close();
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const dir of dataDirs) await rm(dir, { recursive: true, force: true });
    await db?.drop();
  });

  async function api(coordinator: CoordinatorProcess, method: string, urlPath: string, body?: unknown) {
    const response = await fetch(`${coordinator.url}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  }

  test('killing one coordinator leaves every route served and every worker in sync', async () => {
    const ids = await eventually('three workers connected', 20_000, async () => {
      const { body } = await api(coordinators[1], 'GET', '/workers');
      const connected = body.workers.filter((w: any) => w.connected);
      return connected.length === 3 ? connected.map((w: any) => w.id as string) : undefined;
    });
    const urls: string[] = [];
    for (let i = 0; i < 3; i++) {
      const created = await api(coordinators[i], 'POST', '/routes?wait=applied&timeout_ms=10000', {
        session_id: `multi-session-${i}`,
        service: 'web',
        worker_id: ids[i],
        backends: [{ host: '127.0.0.1', port: backend.port }],
      });
      assert.equal(created.status, 201);
      urls.push(created.body.url);
    }

    coordinators[0].child.kill('SIGKILL');
    const survivor = coordinators[2];
    for (const url of urls) {
      await eventually(`route ${url} served`, 10_000, async () => {
        const response = await fetch(url);
        return response.status === 200 ? true : undefined;
      });
    }
    const late = await api(survivor, 'POST', '/routes?wait=applied&timeout_ms=10000', {
      session_id: 'multi-after-kill',
      service: 'web',
      worker_id: ids[0],
      backends: [{ host: '127.0.0.1', port: backend.port }],
    });
    assert.equal(late.status, 201);
    await eventually('route created after the kill served', 10_000, async () => {
      const response = await fetch(late.body.url);
      return response.status === 200 ? true : undefined;
    });
    await eventually('every worker in sync after the kill', 20_000, async () => {
      const { body } = await api(survivor, 'GET', '/workers');
      const inSync = body.workers.filter(
        (w: any) => w.status === 'alive' && w.connected && w.applied_revision >= w.target_revision,
      );
      return inSync.length === 3 ? true : undefined;
    });
  });
});
