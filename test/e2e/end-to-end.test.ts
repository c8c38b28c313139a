import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';
import { startSampleBackend } from '../../src/demo/backend.ts';
import { createTestDatabase, postgresSkipReason, isEmbeddedRun, type TestDatabase } from '../helpers/database.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const skip = isEmbeddedRun ? undefined : await postgresSkipReason();
const HEARTBEAT_MS = 500;

/** Returns a port that nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = createNetServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function start(command: string, args: string[], env: Record<string, string>): ChildProcess {
  const child = spawn(path.join(ROOT, 'bin', command), args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.resume();
  child.stderr?.resume();
  return child;
}

async function eventually<T>(what: string, timeoutMs: number, probe: () => Promise<T | undefined>): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe().catch(() => undefined);
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

describe('end to end with real processes', { skip }, () => {
  let db: TestDatabase;
  let coordinator: ChildProcess;
  let worker: ChildProcess;
  let backend: Awaited<ReturnType<typeof startSampleBackend>>;
  let baseUrl: string;
  let token: string;

  before(async () => {
    db = await createTestDatabase();
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    coordinator = start('appproxy-coordinator', ['--port', String(port), '--data-dir', db.dataDir], {
      ...(db.url ? { DATABASE_URL: db.url } : {}),
      APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
    });
    await eventually('coordinator health', 30_000, async () => {
      const response = await fetch(`${baseUrl}/health`);
      return response.status === 200 ? true : undefined;
    });
    token = JSON.parse(await readFile(path.join(db.dataDir, 'tokens.json'), 'utf8')).manager;
    const first = await freePort();
    worker = start(
      'appproxy-worker',
      ['--authority', 'e2e', '--mode', 'port', '--port-range', `${first}-${first + 5}`],
      { APPPROXY_COORDINATOR_URL: baseUrl, APPPROXY_DATA_DIR: db.dataDir },
    );
    backend = await startSampleBackend({ host: '127.0.0.1', port: 0 });
  });

  after(async () => {
    worker?.kill('SIGKILL');
    coordinator?.kill('SIGTERM');
    await backend?.close();
    await new Promise((resolve) => setTimeout(resolve, 500));
    await db?.drop();
  });

  async function api(method: string, urlPath: string, body?: unknown) {
    const response = await fetch(`${baseUrl}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  }

  test('route serves HTTP and WebSocket, then stops and the worker is lost', async () => {
    const workerId = await eventually('worker connected', 20_000, async () => {
      const { body } = await api('GET', '/workers');
      return body.workers.find((w: any) => w.authority === 'e2e' && w.connected)?.id;
    });
    const created = await api('POST', '/routes', {
      session_id: 'e2e-session',
      service: 'jupyter',
      backends: [{ host: '127.0.0.1', port: backend.port }],
    });
    assert.equal(created.status, 201);
    const url: string = created.body.url;

    const text = await eventually('HTTP through the worker', 5000, async () => {
      const response = await fetch(`${url}/lab?x=1`);
      return response.status === 200 ? response.text() : undefined;
    });
    assert.match(text, /\/lab/);

    const echo = await new Promise<string>((resolve, reject) => {
      const socket = new WebSocket(url.replace(/^http/, 'ws'));
      socket.once('open', () => socket.send('ping through proxy'));
      socket.once('message', (data) => {
        resolve(String(data));
        socket.close();
      });
      socket.once('error', reject);
    });
    assert.match(echo, /ping through proxy/);

    const deleted = await api('DELETE', '/sessions/e2e-session/routes');
    assert.deepEqual(deleted.body, { deleted: 1 });
    await eventually('worker stops serving', 5000, async () => {
      const refused = await fetch(url).then(() => false, () => true);
      return refused ? true : undefined;
    });

    const killedAt = Date.now();
    worker.kill('SIGKILL');
    await eventually('worker lost', 3 * HEARTBEAT_MS + 3000, async () => {
      const { body } = await api('GET', `/workers/${workerId}`);
      return body.status === 'lost' ? true : undefined;
    });
    assert.ok(Date.now() - killedAt <= 3 * HEARTBEAT_MS + 2000);
  });
});
