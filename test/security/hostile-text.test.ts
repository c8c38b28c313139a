import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import { ScriptedWorker } from '../helpers/scripted-worker.ts';

const skip = await postgresSkipReason();

describe('hostile text', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator();
    const worker = new ScriptedWorker({ coordinatorUrl: coordinator.url, workerToken: coordinator.tokens.worker });
    await worker.register();
  });
  after(() => coordinator?.stop());

  async function post(raw: string, headers: Record<string, string> = {}) {
    const response = await fetch(`${coordinator.url}/routes`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${coordinator.tokens.manager}`,
        'content-type': 'application/json',
        ...headers,
      },
      body: raw,
    });
    return { status: response.status, body: await response.json() };
  }

  const route = (sessionId: string, labels: Record<string, string> = {}) =>
    JSON.stringify({ session_id: sessionId, service: 'svc', backends: [{ host: '192.0.2.1', port: 80 }], labels });

  for (const [name, raw] of [
    ['NUL in a session id', route('bad\u0000id')],
    ['lone surrogate in a session id', route('bad\ud800id')],
    ['escape sequence in a session id', route('esc\u001b[31mred')],
    ['NUL in a label value', route('ok-label', { k: '\u0000' })],
  ] as const) {
    test(`${name} is a 400`, async () => {
      const result = await post(raw);
      assert.equal(result.status, 400);
      assert.equal(result.body.status, 400);
    });
  }

  test('NUL in a session path is a 404, not a server error', async () => {
    const result = await coordinator.api('GET', '/sessions/%00/routes');
    assert.equal(result.status, 404);
  });

  test('NUL in a session filter is a 400', async () => {
    const result = await coordinator.api('GET', '/routes?session_id=%00');
    assert.equal(result.status, 400);
  });

  test('compressed body is a 415', async () => {
    const result = await post(route('gz'), { 'content-encoding': 'gzip' });
    assert.equal(result.status, 415);
  });

  test('media type is matched in any case', async () => {
    const result = await post(route('upper-case-type'), { 'content-type': 'APPLICATION/JSON' });
    assert.equal(result.status, 201);
  });

  test('array body is a 400', async () => {
    const created = await post(route('array-patch'));
    const response = await fetch(`${coordinator.url}/routes/${created.body.id}`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${coordinator.tokens.manager}`, 'content-type': 'application/json' },
      body: '[]',
    });
    assert.equal(response.status, 400);
  });

  test('bad create does not fail the others in its batch', async () => {
    const bodies = Array.from({ length: 15 }, (_, i) => route(`batch-${i}`));
    bodies.splice(7, 0, route('batch-bad\ud800'));
    const results = await Promise.all(bodies.map((raw) => post(raw)));
    assert.equal(results.filter((result) => result.status === 201).length, 15);
    assert.equal(results.filter((result) => result.status === 400).length, 1);
  });
});
