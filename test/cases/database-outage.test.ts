import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chown, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import postgres from 'postgres';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  CoordinatorProcess,
  HEARTBEAT_MS,
  apiClient,
  connectedWorker,
  eventsSince,
  eventually,
  freePort,
  listAll,
  routeBody,
  sleep,
  waitInSync,
  type Api,
} from './support.ts';

const run = promisify(execFile);

/** How long PostgreSQL stays down: past the lost deadline (3 × I + 1 s) by 4 s. */
const OUTAGE_MS = 3 * HEARTBEAT_MS + 5000;

/**
 * A PostgreSQL cluster of this suite's own, in a temporary directory, so
 * stopping it disturbs no other suite. `initdb` refuses to run as root, so
 * the server runs as the `postgres` user.
 */
class ThrowawayCluster {
  readonly directory: string;
  readonly port: number;

  constructor(directory: string, port: number) {
    this.directory = directory;
    this.port = port;
  }

  static async create(): Promise<ThrowawayCluster> {
    const directory = await mkdtemp(path.join(tmpdir(), 'appproxy-pg-'));
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: group } = await run('id', ['-g', 'postgres']);
    await chown(directory, Number(stdout), Number(group));
    const cluster = new ThrowawayCluster(directory, await freePort());
    const options = ['-D', cluster.dataDir, '--auth=trust', '-U', 'postgres', '--no-sync'];
    await cluster.#asPostgres('initdb', options);
    await cluster.start();
    return cluster;
  }

  get dataDir(): string {
    return path.join(this.directory, 'data');
  }

  url(database: string): string {
    return `postgres://postgres@127.0.0.1:${this.port}/${database}`;
  }

  async start(): Promise<void> {
    const settings = [
      `-p ${this.port}`,
      '-c listen_addresses=127.0.0.1',
      `-c unix_socket_directories=${this.directory}`,
      '-c fsync=off',
    ].join(' ');
    const log = path.join(this.directory, 'log');
    const args = ['-D', this.dataDir, '-o', settings, '-l', log, '-w', 'start'];
    await this.#asPostgres('pg_ctl', args);
  }

  async stop(): Promise<void> {
    await this.#asPostgres('pg_ctl', ['-D', this.dataDir, '-m', 'immediate', '-w', 'stop']);
  }

  async destroy(): Promise<void> {
    await this.stop().catch(() => {});
    await rm(this.directory, { recursive: true, force: true });
  }

  #asPostgres(command: string, args: string[]) {
    const options = { cwd: this.directory, timeout: 60_000 };
    return run('runuser', ['-u', 'postgres', '--', command, ...args], options);
  }
}

/** Returns why no throwaway cluster can be made here, or undefined when one can. */
async function clusterSkipReason(): Promise<string | undefined> {
  try {
    await run('runuser', ['-u', 'postgres', '--', 'initdb', '--version']);
    await run('runuser', ['-u', 'postgres', '--', 'pg_ctl', '--version']);
    return undefined;
  } catch (error) {
    const reason = (error as Error).message.split('\n')[0];
    return `needs initdb and pg_ctl run as the postgres user through runuser: ${reason}`;
  }
}

const skip = await clusterSkipReason();

// The coordinator rides out dropped connections and a stopped database by
// itself: writes fail fast with 503, no healthy worker is declared lost, and
// everything works again soon after PostgreSQL is back.
describe('database outage', { skip }, () => {
  let cluster: ThrowawayCluster;
  let coordinator: CoordinatorProcess;
  let api: Api;
  let admin: postgres.Sql;
  const workers: ScriptedWorker[] = [];
  let routeCount = 0;

  before(async () => {
    cluster = await ThrowawayCluster.create();
    admin = postgres(cluster.url('postgres'), { max: 1, onnotice: () => {} });
    await admin`CREATE DATABASE appproxy`;
    coordinator = new CoordinatorProcess({
      databaseUrl: cluster.url('appproxy'),
      dataDir: path.join(cluster.directory, 'coordinator'),
      port: await freePort(),
    });
    await coordinator.start();
    api = apiClient(() => coordinator.url, coordinator.tokens.manager);
    const ranges: Array<[number, number]> = [[20000, 20099], [20100, 20199]];
    for (const [i, portRange] of ranges.entries()) {
      workers.push(await connectedWorker(coordinator, { authority: `proxy-${i}`, portRange }));
    }
    for (let i = 0; i < 3; i++) {
      const body = routeBody(`s${i}`, 'jupyter', '192.0.2.150:8080');
      const created = await api('POST', '/routes', body);
      assert.equal(created.status, 201);
    }
    routeCount = 3;
    for (const worker of workers) await waitInSync(api, worker.id);
  });
  after(async () => {
    for (const worker of workers) worker.kill();
    await coordinator?.stop('SIGKILL');
    await admin?.end({ timeout: 1 }).catch(() => {});
    await cluster?.destroy();
  });

  test('dropped connections are replaced without a restart', async () => {
    await admin`
      SELECT pg_terminate_backend(pid) FROM pg_stat_activity
      WHERE datname = 'appproxy' AND pid <> pg_backend_pid()`;
    const startedAt = Date.now();
    const body = routeBody('after-drop', 'jupyter', '192.0.2.151:8080');
    let created = await api('POST', '/routes', body);
    if (created.status !== 201) created = await api('POST', '/routes', body);
    assert.equal(created.status, 201, JSON.stringify(created.body));
    assert.ok(Date.now() - startedAt <= 5000);
    routeCount += 1;
  });

  test('stopped database fails fast, loses no worker', async () => {
    const before = (await api('GET', '/health')).body.revision;
    await admin.end({ timeout: 1 });
    await cluster.stop();
    const stoppedAt = Date.now();

    const writeStartedAt = Date.now();
    const write = await api('POST', '/routes', routeBody('during', 'jupyter', '192.0.2.152:8080'));
    assert.equal(write.status, 503);
    assert.equal(write.headers.get('content-type'), 'application/problem+json');
    const writeMs = Date.now() - writeStartedAt;
    assert.ok(writeMs <= 2000, `the write failed after ${writeMs} ms`);
    const health = await api('GET', '/health');
    assert.equal(health.status, 503);
    assert.equal(health.body.db, 'down');

    await sleep(OUTAGE_MS - (Date.now() - stoppedAt));
    for (const worker of workers) {
      assert.equal(worker.closeCode, null, `${worker.options.authority} kept its socket`);
    }
    await cluster.start();
    const restartedAt = Date.now();

    await eventually('health up', 10_000, async () => {
      const response = await api('GET', '/health');
      return response.status === 200 && response.body.db === 'up' ? true : undefined;
    });
    const created = await eventually('a create', 10_000 - (Date.now() - restartedAt), async () => {
      const body = routeBody('after-outage', 'jupyter', '192.0.2.153:8080');
      const response = await api('POST', '/routes', body);
      return response.status === 201 ? response : undefined;
    });
    assert.equal(created.status, 201);
    routeCount += 1;
    const upAt = Date.now();
    for (const worker of workers) {
      await waitInSync(api, worker.id, 2 * HEARTBEAT_MS - (Date.now() - upAt));
    }

    // One full lost deadline after the database came back, still no worker is lost.
    await sleep(3 * HEARTBEAT_MS + 1000 - (Date.now() - restartedAt));
    const events = await eventsSince(api, before);
    const badTypes = ['worker.lost', 'route.deleted', 'route.moved'];
    const bad = events.filter((event) => badTypes.includes(event.type));
    assert.deepEqual(bad, []);
    for (const worker of workers) {
      const state = await api('GET', `/workers/${worker.id}`);
      assert.equal(state.body.status, 'alive');
      assert.equal(state.body.connected, true);
      assert.equal(worker.closeCode, null);
    }
    assert.equal((await listAll(api, '/routes')).length, routeCount);
  });
});
