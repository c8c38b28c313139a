import assert from 'node:assert/strict';
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { createTestDatabase, postgresSkipReason, type TestDatabase } from '../helpers/database.ts';
import { freePort } from '../helpers/processes.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const run = promisify(execFile);
const skip = await postgresSkipReason();

/** Makes a CA and a server certificate for 127.0.0.1 signed by it. */
async function makeCertificates(dir: string): Promise<void> {
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem',
    '-days', '1', '-subj', '/CN=appproxy test CA');
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr',
    '-subj', '/CN=127.0.0.1');
  await writeFile(path.join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key',
    '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf');
}

function healthStatus(url: string, ca: Buffer): Promise<number> {
  return new Promise((resolve) => {
    const call = request(`${url}/health`, { ca }, (response) => {
      response.resume();
      resolve(response.statusCode ?? 0);
    });
    call.on('error', () => resolve(0));
    call.end();
  });
}

describe('TLS', { skip }, () => {
  let db: TestDatabase;
  let certs: string;
  let coordinator: ChildProcess;
  let worker: ChildProcess | undefined;
  let url: string;

  before(async () => {
    db = await createTestDatabase();
    certs = await mkdtemp(path.join(tmpdir(), 'appproxy-tls-'));
    await makeCertificates(certs);
    const port = await freePort();
    url = `https://127.0.0.1:${port}`;
    coordinator = spawn(path.join(ROOT, 'bin', 'appproxy-coordinator'), [
      '--port', String(port), '--data-dir', db.dataDir,
      '--tls-cert', path.join(certs, 'server.pem'), '--tls-key', path.join(certs, 'server.key'),
    ], { env: { ...process.env, DATABASE_URL: db.url ?? '' }, stdio: 'ignore' });
    const ca = await readFile(path.join(certs, 'ca.pem'));
    const deadline = Date.now() + 30_000;
    while ((await healthStatus(url, ca)) !== 200) {
      assert.ok(Date.now() < deadline, 'coordinator over TLS did not become healthy');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  });
  after(async () => {
    worker?.kill('SIGKILL');
    coordinator?.kill('SIGTERM');
    await new Promise((resolve) => setTimeout(resolve, 300));
    await rm(certs, { recursive: true, force: true });
    await db?.drop();
  });

  function cli(args: string[], env: Record<string, string> = {}) {
    return run(path.join(ROOT, 'bin', 'appproxy'), args, {
      env: { ...process.env, APPPROXY_DATA_DIR: db.dataDir, APPPROXY_COORDINATOR_URL: url, ...env },
      timeout: 20_000,
    });
  }

  test('CLI with the CA file reads over HTTPS', async () => {
    const { stdout } = await cli(['workers', '--json', '--ca-file', path.join(certs, 'ca.pem')]);
    assert.ok(Array.isArray(JSON.parse(stdout)) || typeof JSON.parse(stdout) === 'object');
  });

  test('CLI without the CA file fails verification', async () => {
    await assert.rejects(cli(['workers', '--json']));
  });

  test('worker with the CA file connects over WSS', async () => {
    const first = await freePort();
    worker = spawn(path.join(ROOT, 'bin', 'appproxy-worker'), [
      '--authority', 'tls-worker', '--port-range', `${first}-${first + 1}`, '--log-level', 'warn',
    ], {
      env: {
        ...process.env,
        APPPROXY_COORDINATOR_URL: url,
        APPPROXY_DATA_DIR: db.dataDir,
        APPPROXY_CA_FILE: path.join(certs, 'ca.pem'),
      },
      stdio: 'ignore',
    });
    const deadline = Date.now() + 20_000;
    for (;;) {
      const { stdout } = await cli(['workers', '--json'], { APPPROXY_CA_FILE: path.join(certs, 'ca.pem') });
      if (stdout.includes('"tls-worker"') && /"connected":\s*true/.test(stdout)) break;
      assert.ok(Date.now() < deadline, `worker did not connect over WSS: ${stdout}`);
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });

  test('only one of the TLS files stops start-up', async () => {
    const result = await run(path.join(ROOT, 'bin', 'appproxy-coordinator'), [
      '--print-config', '--tls-cert', path.join(certs, 'server.pem'),
    ]).then(() => 0, (error) => error.code as number);
    assert.equal(result, 2);
  });
});
