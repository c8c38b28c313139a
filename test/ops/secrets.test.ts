import assert from 'node:assert/strict';
import { stat } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import {
  createTestDatabase,
  isEmbeddedRun,
  postgresSkipReason,
  type TestDatabase,
} from '../helpers/database.ts';
import { startCoordinatorProcess, type CoordinatorProcess } from '../helpers/processes.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = isEmbeddedRun ? undefined : await postgresSkipReason();

/** A configured token; the other kinds are generated into tokens.json. */
const CONFIGURED_READ_TOKEN = 'configured-read-token-4f1c9b7e2d';
/** Tokens the coordinator never issued, sent as attacks or typos would be. */
const UNKNOWN_TOKENS = ['unknown-token-0a8b7c6d5e4f', 'unknown-session-token-9z8y7x'];

describe('logs at debug level hold no token', { skip }, () => {
  let db: TestDatabase;
  let coordinator: CoordinatorProcess;
  let tokens: { manager: string; worker: string; read: string };
  let sessionToken: string;
  let exitCode: number | null;

  before(async () => {
    db = await createTestDatabase();
    coordinator = await startCoordinatorProcess({
      databaseUrl: db.url,
      dataDir: db.dataDir,
      env: { APPPROXY_LOG_LEVEL: 'debug', APPPROXY_READ_TOKEN: CONFIGURED_READ_TOKEN },
    });
    tokens = await coordinator.tokens();
    sessionToken = await exercise(coordinator, tokens);
    exitCode = await coordinator.stop();
  });

  after(async () => {
    coordinator?.child.kill('SIGKILL');
    await db?.drop();
  });

  test('tokens file is mode 0600', async () => {
    const { mode } = await stat(path.join(db.dataDir, 'tokens.json'));
    assert.equal(mode & 0o777, 0o600);
  });

  test('coordinator logged requests at debug level', () => {
    assert.equal(exitCode, 0);
    const lines = coordinator.output().trim().split('\n').map((line) => JSON.parse(line));
    const requests = lines.filter((line) => line.msg === 'request');
    assert.ok(requests.length >= 10, `only ${requests.length} request lines`);
    assert.ok(requests.every((line) => typeof line.request_id === 'string'));
    assert.ok(lines.some((line) => line.msg === 'worker registered' && line.worker_id));
    assert.ok(requests.some((line) => line.status === 401));
    assert.ok(requests.some((line) => line.status === 403));
  });

  test('no token value appears in stdout or stderr', () => {
    const output = coordinator.output();
    const secrets = {
      manager: tokens.manager,
      worker: tokens.worker,
      'generated read': tokens.read,
      'configured read': CONFIGURED_READ_TOKEN,
      session: sessionToken,
      unknown: UNKNOWN_TOKENS[0],
      'unknown session': UNKNOWN_TOKENS[1],
    };
    for (const [kind, secret] of Object.entries(secrets)) {
      assert.ok(secret.length >= 20, `${kind} token is too short to search for`);
      assert.ok(!output.includes(secret), `the ${kind} token appears in the output`);
    }
  });
});

/**
 * Drives registration, a worker session, route writes and reads, and requests
 * with bad tokens. Returns the worker's session token.
 */
async function exercise(
  coordinator: CoordinatorProcess,
  tokens: { manager: string; worker: string; read: string },
): Promise<string> {
  const call = (method: string, urlPath: string, token: string, body?: unknown) =>
    fetch(`${coordinator.url}${urlPath}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    }).then((response) => response.status);

  const worker = new ScriptedWorker({
    coordinatorUrl: coordinator.url,
    workerToken: tokens.worker,
  });
  await worker.register();
  await worker.connect();
  await worker.waitFor(() => worker.epoch !== '', 5000, 'the snapshot');
  const sessionToken: string = worker.registration.session_token;

  const route = { session_id: 's1', service: 'web', backends: [{ host: '127.0.0.1', port: 80 }] };
  const createPath = '/routes?wait=applied&timeout_ms=5000';
  assert.equal(await call('POST', createPath, tokens.manager, route), 201);
  assert.equal(await call('GET', '/routes', CONFIGURED_READ_TOKEN), 200);
  assert.equal(await call('GET', `/lookup?worker_id=${worker.id}&port=20000`, sessionToken), 200);
  assert.equal(await call('GET', '/metrics', CONFIGURED_READ_TOKEN), 200);
  assert.equal(await call('DELETE', '/sessions/s1/routes', tokens.manager), 200);

  // Bad tokens: unknown, of the wrong kind, malformed, and in the wrong scheme.
  assert.equal(await call('GET', '/routes', UNKNOWN_TOKENS[0]), 401);
  assert.equal(await call('POST', '/routes', tokens.worker, route), 403);
  assert.equal(await call('POST', '/workers/register', tokens.manager, {}), 403);
  assert.equal(await call('GET', '/workers', sessionToken), 403);
  const basic = await fetch(`${coordinator.url}/routes`, {
    headers: { authorization: `Basic ${tokens.manager}` },
  });
  assert.equal(basic.status, 401);
  assert.equal(await call('POST', '/routes', tokens.manager, { session_id: tokens.manager }), 400);
  assert.equal(await upgradeStatus(coordinator.url, '/workers/stream', UNKNOWN_TOKENS[1]), 401);
  assert.equal(await upgradeStatus(coordinator.url, '/events/stream', tokens.worker), 403);

  await worker.close();
  return sessionToken;
}

/** Attempts a WebSocket upgrade and returns the HTTP status of the refusal. */
function upgradeStatus(baseUrl: string, urlPath: string, token: string): Promise<number> {
  const socket = new WebSocket(`${baseUrl.replace(/^http/, 'ws')}${urlPath}`, {
    headers: { authorization: `Bearer ${token}` },
  });
  return new Promise((resolve, reject) => {
    socket.once('unexpected-response', (_request, response) => resolve(response.statusCode ?? 0));
    socket.once('open', () => {
      socket.close();
      reject(new Error(`${urlPath} accepted the token`));
    });
    socket.once('error', reject);
  });
}
