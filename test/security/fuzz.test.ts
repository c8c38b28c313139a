import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { WebSocket } from 'ws';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

// A fixed seed keeps CI repeatable; `make fuzz` raises the run count and varies the seed.
const SEED = Number(process.env.APPPROXY_FUZZ_SEED ?? 20261204);
const RUNS = Number(process.env.APPPROXY_FUZZ_RUNS ?? 300);

const skip = await postgresSkipReason();

/** Values that look like route fields, mixed with hostile ones. */
const fieldValue = fc.oneof(
  fc.string({ maxLength: 80 }),
  fc.integer({ min: -70000, max: 70000 }),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.constantFrom('192.0.2.10', 'jupyter', 's1', '10.0.0.0/8', '__proto__', 'constructor'),
  fc.array(fc.record({ host: fc.constantFrom('192.0.2.10', '', 'x'.repeat(300)), port: fc.integer() }), {
    maxLength: 3,
  }),
  fc.dictionary(fc.string({ maxLength: 10 }), fc.string({ maxLength: 20 }), { maxKeys: 3 }),
);

const routeKeys = fc.constantFrom(
  'session_id', 'service', 'backends', 'protocol', 'mode', 'worker_id', 'port', 'subdomain',
  'open_to_public', 'allowed_client_ips', 'labels', '__proto__', 'constructor', 'prototype', 'extra',
);

const workerKeys = fc.constantFrom(
  'authority', 'frontend_mode', 'hostname', 'protocols', 'port_range', 'wildcard_domain',
  'advertised_port', 'capacity', 'labels', 'instance_id', '__proto__', 'unknown',
);

function bodyOf(keys: fc.Arbitrary<string>): fc.Arbitrary<unknown> {
  const object = fc.dictionary(keys, fieldValue, { maxKeys: 8 });
  return fc.oneof({ weight: 8, arbitrary: object }, { weight: 1, arbitrary: fieldValue });
}

describe('hostile input', { skip }, () => {
  let coordinator: TestCoordinator;
  let worker: ScriptedWorker;

  before(async () => {
    coordinator = await startTestCoordinator();
    worker = new ScriptedWorker({ coordinatorUrl: coordinator.url, workerToken: coordinator.tokens.worker });
    await worker.register();
  });
  after(async () => {
    await worker?.close();
    await coordinator?.stop();
  });

  async function send(method: string, path: string, raw: string, token: string) {
    const response = await fetch(`${coordinator.url}${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: raw,
    });
    return { status: response.status, text: await response.text() };
  }

  async function revision(): Promise<number> {
    return (await coordinator.api('GET', '/health')).body.revision;
  }

  test('generated REST bodies never cause a server error', async () => {
    const heapBefore = process.memoryUsage().heapUsed;
    const targets = [
      { method: 'POST', path: '/routes', body: bodyOf(routeKeys), token: 'manager' },
      { method: 'POST', path: '/workers/register', body: bodyOf(workerKeys), token: 'worker' },
    ] as const;
    for (const target of targets) {
      await fc.assert(
        fc.asyncProperty(target.body, async (body) => {
          const before = await revision();
          const result = await send(target.method, target.path, JSON.stringify(body), coordinator.tokens[target.token]);
          assert.ok(result.status < 500, `${target.path} answered ${result.status}: ${result.text}`);
          if (result.status >= 400) assert.equal(await revision(), before, 'a rejected request changed state');
        }),
        { seed: SEED, numRuns: RUNS },
      );
    }
    // The coordinator runs in this process: rejected requests must not leave memory behind.
    global.gc?.();
    const growthMiB = (process.memoryUsage().heapUsed - heapBefore) / 2 ** 20;
    assert.ok(growthMiB < 64, `heap grew by ${growthMiB.toFixed(1)} MiB during the fuzz run`);
  });

  test('prototype keys in bodies have no effect', async () => {
    const raw = '{"session_id":"p1","service":"svc","backends":[{"host":"192.0.2.1","port":80}],' +
      '"__proto__":{"isAdmin":true},"constructor":{"prototype":{"polluted":1}}}';
    const result = await send('POST', '/routes', raw, coordinator.tokens.manager);
    assert.equal(result.status, 400);
    assert.equal(({} as Record<string, unknown>).isAdmin, undefined);
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
  });

  test('generated worker frames close only with documented codes', async () => {
    const documented = new Set([4400, 4408, 4429, 1000, 1005]);
    const frame = fc.oneof(
      fc.string({ maxLength: 200 }),
      fc.json({ maxDepth: 3 }),
      fc
        .record({ type: fc.constantFrom('hello', 'ack', 'nack', 'heartbeat', 'bogus'), revision: fieldValue, digest: fieldValue })
        .map((message) => JSON.stringify(message)),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(frame, { minLength: 1, maxLength: 6 }), async (frames) => {
        const code = await sendFrames(frames);
        assert.ok(code === 'open' || documented.has(code), `closed with ${code}`);
      }),
      { seed: SEED, numRuns: Math.max(20, Math.floor(RUNS / 5)) },
    );
    const health = await coordinator.api('GET', '/health');
    assert.equal(health.status, 200);
  });

  function sendFrames(frames: string[]): Promise<number | 'open'> {
    const url = `${coordinator.url.replace(/^http/, 'ws')}/workers/stream`;
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${worker.registration.session_token}` } });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        socket.terminate();
        resolve('open');
      }, 300);
      socket.once('open', () => {
        for (const text of frames) socket.send(text);
      });
      socket.once('close', (code) => {
        clearTimeout(timer);
        resolve(code);
      });
      socket.once('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
    });
  }
});
