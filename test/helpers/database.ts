import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import postgres from 'postgres';

/** Server that suites create their databases on; the local PostgreSQL by default. */
const ADMIN_URL = process.env.APPPROXY_TEST_ADMIN_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';

/** Set by `make test` for its second pass, which runs suites on the embedded database. */
export const isEmbeddedRun = process.env.APPPROXY_TEST_EMBEDDED === '1';

let reachable: Promise<boolean> | undefined;

/** Returns whether the test PostgreSQL accepts connections. */
export function isPostgresReachable(): Promise<boolean> {
  reachable ??= (async () => {
    const sql = postgres(ADMIN_URL, { max: 1, connect_timeout: 2, onnotice: () => {} });
    try {
      await sql`SELECT 1`;
      return true;
    } catch {
      return false;
    } finally {
      await sql.end({ timeout: 1 });
    }
  })();
  return reachable;
}

/**
 * Returns why a PostgreSQL suite cannot run here, or undefined when it can.
 * CI sets APPPROXY_REQUIRE_POSTGRES=1, so there a missing server fails instead.
 */
export async function postgresSkipReason(): Promise<string | undefined> {
  if (await isPostgresReachable()) return undefined;
  if (process.env.APPPROXY_REQUIRE_POSTGRES === '1') {
    throw new Error(`PostgreSQL at ${ADMIN_URL} is required but does not answer`);
  }
  return `PostgreSQL at ${ADMIN_URL} does not answer`;
}

export interface TestDatabase {
  /** DATABASE_URL for a coordinator, or undefined on the embedded database. */
  url: string | undefined;
  /** Data directory for the coordinator (tokens, embedded database). */
  dataDir: string;
  drop(): Promise<void>;
}

/** Creates an empty database of its own for one suite: PostgreSQL, or embedded on that pass. */
export async function createTestDatabase(): Promise<TestDatabase> {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'appproxy-test-'));
  if (isEmbeddedRun) {
    return { url: undefined, dataDir, drop: () => rm(dataDir, { recursive: true, force: true }) };
  }
  const name = `appproxy_test_${randomBytes(6).toString('hex')}`;
  const admin = postgres(ADMIN_URL, { max: 1, onnotice: () => {} });
  await admin.unsafe(`CREATE DATABASE ${name}`);
  await admin.end();
  const url = new URL(ADMIN_URL);
  url.pathname = `/${name}`;
  return {
    url: url.toString(),
    dataDir,
    drop: async () => {
      const sql = postgres(ADMIN_URL, { max: 1, onnotice: () => {} });
      await sql.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => {});
      await sql.end();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
