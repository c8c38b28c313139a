import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = await postgresSkipReason();

type Kind = 'manager' | 'worker' | 'read' | 'session';

/** Every REST endpoint that needs a token, with the token kinds it accepts. */
const ENDPOINTS: Array<{ method: string; path: string; accepts: Kind[]; body?: unknown }> = [
  { method: 'POST', path: '/workers/register', accepts: ['worker'], body: {} },
  { method: 'GET', path: '/workers', accepts: ['manager', 'read'] },
  { method: 'GET', path: '/workers/{uuid}', accepts: ['manager', 'read'] },
  { method: 'DELETE', path: '/workers/{uuid}', accepts: ['manager'] },
  { method: 'POST', path: '/routes', accepts: ['manager'], body: {} },
  { method: 'GET', path: '/routes', accepts: ['manager', 'read'] },
  { method: 'GET', path: '/routes/{uuid}', accepts: ['manager', 'read'] },
  { method: 'PATCH', path: '/routes/{uuid}', accepts: ['manager'], body: {} },
  { method: 'DELETE', path: '/routes/{uuid}', accepts: ['manager'] },
  { method: 'GET', path: '/sessions/s1/routes', accepts: ['manager', 'read'] },
  { method: 'DELETE', path: '/sessions/s1/routes', accepts: ['manager'] },
  { method: 'PUT', path: '/sessions/s1/routes', accepts: ['manager'], body: { routes: [] } },
  { method: 'POST', path: '/workers/{uuid}/drain', accepts: ['manager'], body: {} },
  { method: 'GET', path: '/lookup?host=a.apps.example.test', accepts: ['manager', 'read', 'session'] },
  { method: 'GET', path: '/events', accepts: ['manager', 'read'] },
  { method: 'GET', path: '/metrics', accepts: ['manager', 'read'] },
];

const KINDS: Kind[] = ['manager', 'worker', 'read', 'session'];

describe('token scopes', { skip }, () => {
  let coordinator: TestCoordinator;
  let tokens: Record<Kind, string>;

  before(async () => {
    coordinator = await startTestCoordinator();
    const worker = new ScriptedWorker({
      coordinatorUrl: coordinator.url,
      workerToken: coordinator.tokens.worker,
      authority: 'scopes',
    });
    const registration = await worker.register();
    tokens = { ...coordinator.tokens, session: registration.session_token };
  });
  after(() => coordinator?.stop());

  async function call(endpoint: (typeof ENDPOINTS)[number], authorization?: string) {
    const headers: Record<string, string> = { 'content-type': 'application/json' };
    if (authorization !== undefined) headers.authorization = authorization;
    const response = await fetch(`${coordinator.url}${endpoint.path.replace('{uuid}', randomUUID())}`, {
      method: endpoint.method,
      headers,
      body: endpoint.body === undefined ? undefined : JSON.stringify(endpoint.body),
    });
    await response.arrayBuffer();
    return response.status;
  }

  for (const endpoint of ENDPOINTS) {
    const name = `${endpoint.method} ${endpoint.path}`;

    test(`${name} rejects a missing or unknown token`, async () => {
      assert.equal(await call(endpoint), 401);
      assert.equal(await call(endpoint, 'Bearer not-a-known-token'), 401);
    });

    for (const kind of KINDS) {
      const isAccepted = endpoint.accepts.includes(kind);
      test(`${name} ${isAccepted ? 'accepts' : 'forbids'} a ${kind} token`, async () => {
        const status = await call(endpoint, `Bearer ${tokens[kind]}`);
        if (isAccepted) {
          assert.notEqual(status, 401);
          assert.notEqual(status, 403);
        } else {
          assert.equal(status, 403);
        }
      });
    }
  }

  for (const kind of KINDS) {
    const isAccepted = kind === 'manager' || kind === 'read';
    test(`event stream ${isAccepted ? 'accepts' : 'forbids'} a ${kind} token`, async () => {
      const outcome = await upgrade('/events/stream', tokens[kind]);
      assert.equal(outcome, isAccepted ? 'open' : 403);
    });
  }

  test('event stream rejects a missing token', async () => {
    assert.equal(await upgrade('/events/stream'), 401);
  });

  test('worker stream takes only session tokens', async () => {
    for (const kind of ['manager', 'worker', 'read'] as const) {
      assert.equal(await upgrade('/workers/stream', tokens[kind]), 401);
    }
    assert.equal(await upgrade('/workers/stream', tokens.session), 'open');
  });

  function upgrade(path: string, token?: string): Promise<number | 'open'> {
    const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};
    const socket = new WebSocket(`${coordinator.url.replace(/^http/, 'ws')}${path}`, { headers });
    return new Promise((resolve, reject) => {
      socket.once('open', () => {
        socket.terminate();
        resolve('open');
      });
      socket.once('unexpected-response', (_request, response) => {
        resolve(response.statusCode ?? 0);
        socket.terminate();
      });
      socket.once('error', reject);
    });
  }
});
