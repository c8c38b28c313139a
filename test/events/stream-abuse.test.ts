import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';
import { startTestCoordinator, type TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';

const skip = await postgresSkipReason();

describe('event stream abuse', { skip }, () => {
  let coordinator: TestCoordinator;

  before(async () => {
    coordinator = await startTestCoordinator();
  });
  after(() => coordinator?.stop());

  function open(): Promise<WebSocket> {
    const url = `${coordinator.url.replace(/^http/, 'ws')}/events/stream`;
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${coordinator.tokens.read}` } });
    return new Promise((resolve, reject) => {
      socket.once('open', () => resolve(socket));
      socket.once('error', reject);
    });
  }

  test('oversized client frame closes only that stream', async () => {
    const socket = await open();
    const closed = new Promise<number>((resolve) => socket.once('close', resolve));
    socket.send('x'.repeat(100_000));
    assert.equal(await closed, 1009);
    const health = await coordinator.api('GET', '/health');
    assert.equal(health.status, 200);
    const other = await open();
    other.close();
  });
});
