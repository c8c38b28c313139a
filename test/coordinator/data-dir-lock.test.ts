import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { freePort, startCoordinatorProcess, type CoordinatorProcess } from '../helpers/processes.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);

describe('embedded data directory', () => {
  let dataDir: string;
  let first: CoordinatorProcess;

  before(async () => {
    dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-lock-'));
    first = await startCoordinatorProcess({ dataDir, env: { DATABASE_URL: '' } });
  });
  after(async () => {
    await first?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  test('second coordinator on the same directory refuses to start', async () => {
    const port = await freePort();
    const exitCode = await run(
      path.join(ROOT, 'bin', 'appproxy-coordinator'),
      ['--port', String(port), '--data-dir', dataDir],
      { env: { ...process.env, DATABASE_URL: '' }, timeout: 30_000 },
    ).then(
      () => 0,
      (error) => {
        assert.match(String(error.stdout) + String(error.stderr), /in use by process/);
        return error.code as number;
      },
    );
    assert.equal(exitCode, 1);
    const health = await fetch(`${first.url}/health`);
    assert.equal(health.status, 200);
  });

  test('unreadable TLS file stops start-up with a usage error', async () => {
    const exitCode = await run(path.join(ROOT, 'bin', 'appproxy-coordinator'), [
      '--tls-cert', '/nonexistent/server.pem', '--tls-key', '/nonexistent/server.key',
    ]).then(() => 0, (error) => error.code as number);
    assert.equal(exitCode, 2);
  });
});
