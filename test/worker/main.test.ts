import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { tableDigest } from '../../proto/index.ts';
import { ScriptedCoordinator, WORKER_TOKEN } from './coordinator.ts';
import {
  freePort,
  httpGet,
  LOOPBACK,
  makeRoute,
  startHttpBackend,
  waitFor,
  withTimeout,
} from './helpers.ts';

const BIN = fileURLToPath(new URL('../../bin/appproxy-worker', import.meta.url));

const cleanups: Array<() => Promise<void>> = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

interface WorkerProcess {
  child: ChildProcess;
  output: () => string;
  exited: Promise<number | null>;
}

/** Environment without the caller's APPPROXY_ settings, so only the test's own apply. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('APPPROXY_')) delete env[name];
  return { ...env, ...extra };
}

function runWorker(args: string[], env: Record<string, string> = {}): WorkerProcess {
  const child = spawn(BIN, args, { env: cleanEnv(env), stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    await exited;
  });
  return { child, output: () => output, exited };
}

async function startCoordinator(): Promise<ScriptedCoordinator> {
  const coordinator = await new ScriptedCoordinator().start();
  cleanups.push(() => coordinator.close());
  return coordinator;
}

function portModeArgs(coordinatorUrl: string): string[] {
  const required = ['--authority', 'worker-a', '--port-range', '20000-20099'];
  return [...required, '--coordinator-url', coordinatorUrl];
}

describe('appproxy-worker', () => {
  test('help lists options and exits 0', async () => {
    const worker = runWorker(['--help']);

    assert.equal(await withTimeout(worker.exited, 20_000, 'exit'), 0);
    assert.match(worker.output(), /--coordinator-url <urls>/);
    assert.match(worker.output(), /APPPROXY_WORKER_TOKEN/);
  });

  test('missing authority exits with usage error', async () => {
    const worker = runWorker(['--port-range', '20000-20099']);

    assert.notEqual(await withTimeout(worker.exited, 20_000, 'exit'), 0);
    assert.match(worker.output(), /--authority/);
  });

  test('worker serves routes and exits 0 on SIGTERM', async () => {
    const coordinator = await startCoordinator();
    const backend = await startHttpBackend('alpha');
    cleanups.push(() => backend.close());
    const args = [...portModeArgs(coordinator.url), '--log-level', 'debug'];
    const worker = runWorker(args, { APPPROXY_WORKER_TOKEN: WORKER_TOKEN });

    const session = await coordinator.nextSession(20_000);
    await session.next('hello');
    const port = await freePort();
    const backends = [{ host: LOOPBACK, port: backend.port, weight: 1 }];
    const routes = [makeRoute({ port, backends })];
    const digest = tableDigest(routes);
    session.send({ type: 'snapshot', epoch: coordinator.epoch, revision: 3, routes, digest });
    await session.next('ack');
    const listening = `"port":${port},"msg":"listening"`;
    await waitFor(() => worker.output().includes(listening), 5_000, 'listener');
    const response = await httpGet(port, '/tree');
    assert.equal(response.body, 'alpha GET /tree');

    worker.child.kill('SIGTERM');
    assert.equal(await withTimeout(worker.exited, 10_000, 'exit'), 0);
    assert.equal(await session.closed, 1000);
    assert.ok(!worker.output().includes(WORKER_TOKEN));
    assert.ok(!worker.output().includes(session.token));
  });

  test('worker exits 1 when superseded', async () => {
    const coordinator = await startCoordinator();
    const env = { APPPROXY_WORKER_TOKEN: WORKER_TOKEN };
    const worker = runWorker(portModeArgs(coordinator.url), env);
    const session = await coordinator.nextSession(20_000);
    await session.next('hello');

    session.close(4409, 'superseded');
    assert.equal(await withTimeout(worker.exited, 10_000, 'exit'), 1);
    assert.match(worker.output(), /"level":60.*registered instance .* again/);
  });

  test('worker reads token from data dir', async () => {
    const coordinator = await startCoordinator();
    const dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-worker-'));
    cleanups.push(() => rm(dataDir, { recursive: true, force: true }));
    await writeFile(path.join(dataDir, 'tokens.json'), JSON.stringify({ worker: WORKER_TOKEN }));
    runWorker([...portModeArgs(coordinator.url), '--data-dir', dataDir]);

    const registration = await coordinator.nextRegistration(20_000);
    assert.equal(registration.authorization, `Bearer ${WORKER_TOKEN}`);
  });
});
