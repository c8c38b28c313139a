import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import {
  freePort,
  httpGet,
  startHttpBackend,
  startTcpEcho,
  tcpExchange,
  type TestServer,
} from '../worker/helpers.ts';
import { eventually } from './helpers.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const skip = await postgresSkipReason();
const HEARTBEAT_MS = 500;
const MISSES = 3;
const RANGE_SIZE = 10;

/** Environment without the caller's APPPROXY_ settings, so only the test's own apply. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('APPPROXY_')) delete env[name];
  return { ...env, ...extra };
}

function startProcess(command: string, args: string[], env: Record<string, string>) {
  const child = spawn(path.join(ROOT, 'bin', command), args, {
    env: cleanEnv(env),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output = (output + chunk).slice(-20_000)));
  child.stderr?.on('data', (chunk: Buffer) => (output = (output + chunk).slice(-20_000)));
  return { child, output: () => output };
}

function isPortFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}

/** Finds RANGE_SIZE consecutive ports that nothing listens on right now. */
async function freeRange(): Promise<[number, number]> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = 30_000 + Math.floor(Math.random() * 3000) * RANGE_SIZE;
    const ports = Array.from({ length: RANGE_SIZE }, (_, i) => first + i);
    const isFree = (await Promise.all(ports.map(isPortFree))).every(Boolean);
    if (isFree) return [first, first + RANGE_SIZE - 1];
  }
  throw new Error('no free port range found');
}

async function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = once(child, 'exit');
  child.kill(signal);
  await exited;
}

describe('failover between real worker processes', { skip }, () => {
  let db: TestDatabase;
  let baseUrl: string;
  let token: string;
  const processes: Array<ReturnType<typeof startProcess>> = [];
  let backend: TestServer;
  let tcpBackend: TestServer;
  let first: { id: string; process: ReturnType<typeof startProcess> };
  let second: { id: string; process: ReturnType<typeof startProcess> };

  async function api(method: string, urlPath: string, body?: unknown) {
    const response = await fetch(`${baseUrl}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : null };
  }

  async function startWorker(authority: string, protocols: string) {
    const [low, high] = await freeRange();
    const args = ['--authority', authority, '--mode', 'port', '--port-range', `${low}-${high}`];
    const worker = startProcess('appproxy-worker', [...args, '--protocols', protocols], {
      APPPROXY_COORDINATOR_URL: baseUrl,
      APPPROXY_DATA_DIR: db.dataDir,
    });
    processes.push(worker);
    const id = await eventually(`${authority} connected`, 30_000, async () => {
      const { body } = await api('GET', '/workers');
      return body.workers.find((w: any) => w.authority === authority && w.connected)?.id;
    });
    return { id: id as string, process: worker };
  }

  before(async () => {
    db = await createTestDatabase();
    const port = await freePort();
    baseUrl = `http://127.0.0.1:${port}`;
    const coordinator = startProcess(
      'appproxy-coordinator',
      ['--port', String(port), '--data-dir', db.dataDir],
      {
        ...(db.url ? { DATABASE_URL: db.url } : {}),
        APPPROXY_HEARTBEAT_INTERVAL_MS: String(HEARTBEAT_MS),
        APPPROXY_HEARTBEAT_MISSES: String(MISSES),
      },
    );
    processes.push(coordinator);
    await eventually('coordinator health', 30_000, async () => {
      const response = await fetch(`${baseUrl}/health`).catch(() => null);
      return response?.status === 200 ? true : undefined;
    });
    token = JSON.parse(await readFile(path.join(db.dataDir, 'tokens.json'), 'utf8')).manager;
    backend = await startHttpBackend('session-backend');
    tcpBackend = await startTcpEcho();
    first = await startWorker('proc-a', 'http,tcp');
    second = await startWorker('proc-b', 'http,tcp');
  });

  after(async () => {
    // Workers first, so none reports the coordinator gone; the coordinator last.
    for (const item of processes.slice(1)) await stop(item.child, 'SIGKILL');
    if (processes[0]) await stop(processes[0].child, 'SIGTERM');
    await backend?.close();
    await tcpBackend?.close();
    await db?.drop();
  });

  async function createRoute(sessionId: string, extra: Record<string, unknown>) {
    const response = await api('POST', '/routes', { session_id: sessionId, ...extra });
    assert.equal(response.status, 201, JSON.stringify(response.body));
    return response.body;
  }

  /** Resolves with the body served at a route's `http://host:port` URL once it returns 200. */
  function served(url: string, timeoutMs: number): Promise<string> {
    const port = Number(new URL(url).port);
    return eventually(`HTTP through ${url}`, timeoutMs, async () => {
      const response = await httpGet(port, '/check').catch(() => null);
      return response?.status === 200 ? response.body : undefined;
    });
  }

  test('tcp route carries bytes through the worker', async () => {
    const route = await createRoute('tcp-session', {
      service: 'ssh',
      protocol: 'tcp',
      worker_id: second.id,
      backends: [{ host: '127.0.0.1', port: tcpBackend.port }],
    });
    assert.match(route.url, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    const port = Number(new URL(route.url.replace(/^tcp/, 'http')).port);
    const echoed = await eventually('tcp echo', 5000, async () => {
      const reply = await tcpExchange(port, 'ping over tcp').catch(() => '');
      return reply === 'ping over tcp' ? reply : undefined;
    });
    assert.equal(echoed, 'ping over tcp');
  });

  test('tcp route refuses clients outside allowed_client_ips', async () => {
    const route = await createRoute('tcp-closed', {
      service: 'ssh',
      protocol: 'tcp',
      worker_id: second.id,
      allowed_client_ips: ['10.0.0.0/8'],
      backends: [{ host: '127.0.0.1', port: tcpBackend.port }],
    });
    await eventually('route active', 5000, async () => {
      const current = await api('GET', `/routes/${route.id}`);
      return current.body.status === 'active' ? true : undefined;
    });
    const port = Number(new URL(route.url.replace(/^tcp/, 'http')).port);
    assert.equal(await tcpExchange(port, 'let me in').catch(() => ''), '');
  });

  test('killed worker routes are served by the other within the deadline', async () => {
    const routes = [];
    for (const service of ['jupyter', 'lab', 'board']) {
      routes.push(
        await createRoute('failover-session', {
          service,
          worker_id: first.id,
          backends: [{ host: '127.0.0.1', port: backend.port }],
        }),
      );
    }
    for (const route of routes) {
      assert.match(await served(route.url, 5000), /session-backend GET \/check/);
    }

    const killedAt = Date.now();
    first.process.child.kill('SIGKILL');
    const deadlineMs = HEARTBEAT_MS * MISSES + 2000;
    for (const route of routes) {
      const moved = await eventually('route moved', deadlineMs, async () => {
        const current = await api('GET', `/routes/${route.id}`);
        return current.body.worker_id === second.id ? current.body : undefined;
      });
      const left = deadlineMs - (Date.now() - killedAt);
      assert.ok(left > 0, `route ${route.id} moved ${-left} ms after the deadline`);
      assert.match(await served(moved.url, left), /session-backend GET \/check/);
    }
    const elapsedMs = Date.now() - killedAt;
    assert.ok(elapsedMs <= deadlineMs, `served again after ${elapsedMs} ms`);
    const worker = await api('GET', `/workers/${first.id}`);
    assert.equal(worker.body.status, 'lost');
  });
});
