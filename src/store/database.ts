import { mkdir, open, readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import postgres from 'postgres';

export type Sql = postgres.Sql<Record<string, unknown>>;
export type TransactionSql = postgres.TransactionSql<Record<string, unknown>>;
export type ReservedSql = postgres.ReservedSql<Record<string, unknown>>;
/** The pool, an open transaction or a reserved connection. */
export type Queryable = Sql | TransactionSql | ReservedSql;

/** Attempts of a pipelined transaction whose BEGIN failed, so nothing of it ran. */
const BEGIN_ATTEMPTS = 3;

/**
 * Runs a transaction on a reserved connection without round trips of its
 * own: BEGIN goes out with the first statement `body` sends, and COMMIT with
 * the statements `body` returns still in flight. The first failure among
 * them fails the whole, because PostgreSQL turns a COMMIT after a failed
 * statement into a rollback. When BEGIN itself fails, as on a pooled
 * connection the server has just closed, nothing ran, so `body` runs again
 * on another connection, up to three times in all.
 */
export async function pipelinedTransaction<T>(
  sql: Sql,
  body: (tx: ReservedSql) => Promise<{ value: T; inFlight: Array<Promise<unknown>> }>,
): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    const tx = await sql.reserve();
    let hasBegun = true;
    try {
      const begun = tx`BEGIN`.execute();
      begun.catch(() => {
        hasBegun = false;
      });
      const { value, inFlight } = await body(tx);
      const results = await Promise.allSettled([begun, ...inFlight, tx`COMMIT`]);
      const failed = results.find((result) => result.status === 'rejected');
      if (failed) throw failed.reason;
      return value;
    } catch (error) {
      await tx`ROLLBACK`.catch(() => {});
      if (hasBegun || attempt >= BEGIN_ATTEMPTS) throw error;
    } finally {
      tx.release();
    }
  }
}

export interface DatabaseOptions {
  /** PostgreSQL URL; when absent an embedded PGlite database runs in `dataDir`. */
  databaseUrl?: string;
  dataDir: string;
  /** Connections in the pool. */
  poolSize: number;
  /** How long opening a connection may take before the query fails, in seconds. */
  connectTimeoutS: number;
  /** Server-side statement timeout, in milliseconds. */
  statementTimeoutMs: number;
}

export interface Database {
  sql: Sql;
  /**
   * True on the embedded database: one process, one connection, and no
   * LISTEN notifications.
   */
  isEmbedded: boolean;
  /** A description of where the data lives, without credentials. */
  location: string;
  close(): Promise<void>;
}

// bigint columns (revisions, generations, counts) arrive as strings by default;
// every such value here stays below 2^53, so numbers are exact.
const bigintAsNumber = {
  to: 20,
  from: [20],
  serialize: (value: number) => String(value),
  parse: (value: string) => Number(value),
};

/** Opens PostgreSQL when a URL is given, else an embedded PGlite in the data directory. */
export async function openDatabase(options: DatabaseOptions): Promise<Database> {
  if (options.databaseUrl) return openPostgres(options.databaseUrl, options);
  return openEmbedded(options);
}

/** Maximum wait between attempts to reconnect to the database, in seconds. */
const MAX_RECONNECT_DELAY_S = 1;

/**
 * Returns the wait before reconnect attempt `attempt`, in seconds: doubling
 * from 50 ms up to one second. The driver's default grows to 20 s, which kept
 * every query failing for up to 20 s after the database came back.
 */
export function reconnectDelayS(attempt: number): number {
  return Math.min(0.05 * 2 ** Math.max(0, attempt - 1), MAX_RECONNECT_DELAY_S);
}

function connect(url: string, options: DatabaseOptions, prepare: boolean): Sql {
  return postgres(url, {
    max: options.poolSize,
    prepare,
    connect_timeout: options.connectTimeoutS,
    backoff: reconnectDelayS,
    idle_timeout: 60,
    onnotice: () => {},
    types: { bigint: bigintAsNumber },
    connection: {
      application_name: 'appproxy-coordinator',
      statement_timeout: options.statementTimeoutMs,
    },
  }) as unknown as Sql;
}

function openPostgres(url: string, options: DatabaseOptions): Database {
  const sql = connect(url, options, true);
  const parsed = new URL(url);
  return {
    sql,
    isEmbedded: false,
    location: `postgres://${parsed.host}${parsed.pathname}`,
    close: () => sql.end({ timeout: 5 }),
  };
}

async function openEmbedded(options: DatabaseOptions): Promise<Database> {
  // Loaded only here, so a coordinator on PostgreSQL never loads the WASM build.
  const { PGlite } = await import('@electric-sql/pglite');
  const { PGLiteSocketServer } = await import('@electric-sql/pglite-socket');
  const directory = path.resolve(options.dataDir, 'pglite');
  await mkdir(directory, { recursive: true });
  const releaseLock = await lockDataDir(path.resolve(options.dataDir, 'coordinator.lock'));
  const db = await PGlite.create(directory);
  const server = new PGLiteSocketServer({
    db,
    host: '127.0.0.1',
    port: 0,
    maxConnections: 2,
  });
  await server.start();

  // PGlite has one backend, and the socket server interleaves the protocol
  // messages of concurrent connections on it, so one connection serves all.
  const url = `postgres://postgres@${server.getServerConn()}/postgres`;
  const sql = connect(url, { ...options, poolSize: 1 }, false);
  return {
    sql,
    isEmbedded: true,
    location: `embedded PGlite in ${directory}`,
    close: async () => {
      await sql.end({ timeout: 5 });
      await server.stop();
      await db.close();
      await releaseLock();
    },
  };
}

/**
 * Locks the data directory for this process. Two processes on one embedded
 * database would each keep their own copy and lose each other's writes, so a
 * second one fails here. A lock left by a process that no longer runs is taken over.
 *
 * @returns a function that releases the lock.
 */
async function lockDataDir(file: string): Promise<() => Promise<void>> {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(file, 'wx');
      await handle.writeFile(String(process.pid));
      await handle.close();
      return () => rm(file, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = Number.parseInt(await readFile(file, 'utf8').catch(() => ''), 10);
      if (isRunning(owner)) {
        throw new Error(
          `Data directory ${path.dirname(file)} is in use by process ${owner}; stop it, or give ` +
            'this coordinator another --data-dir or a DATABASE_URL.',
        );
      }
      await rm(file, { force: true });
    }
  }
  throw new Error(`Could not lock data directory ${path.dirname(file)}; retry.`);
}

function isRunning(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}
