import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type postgres from 'postgres';
import type { Sql } from './database.ts';

const SQL_DIR = fileURLToPath(new URL('../../sql/', import.meta.url));

// Arbitrary fixed key of the advisory lock that serialises migrations of
// coordinators starting together on one database.
const MIGRATION_LOCK_KEY = 7_301_001;

interface Migration {
  version: number;
  name: string;
  file: string;
}

async function listMigrations(): Promise<Migration[]> {
  const files = (await readdir(SQL_DIR)).filter((file) => /^\d+_[\w-]+\.sql$/.test(file));
  return files
    .map((file) => ({ version: Number.parseInt(file, 10), name: file.replace(/\.sql$/, ''), file }))
    .sort((a, b) => a.version - b.version);
}

/**
 * Applies the numbered files of `sql/` that the database lacks, each in its own
 * transaction, under a session-level advisory lock.
 *
 * @returns the names of the migrations applied now.
 */
export async function migrate(sql: Sql): Promise<string[]> {
  const connection = await sql.reserve();
  try {
    await connection`SELECT pg_advisory_lock(${MIGRATION_LOCK_KEY})`;
    await connection`
      CREATE TABLE IF NOT EXISTS schema_migrations (
        version integer PRIMARY KEY,
        name text NOT NULL,
        applied_at timestamptz NOT NULL DEFAULT now()
      )`;
    const rows = await connection`SELECT version FROM schema_migrations`;
    const applied = new Set(rows.map((row) => Number(row.version)));
    const pending = (await listMigrations()).filter((m) => !applied.has(m.version));
    for (const migration of pending) await apply(connection, migration);
    return pending.map((m) => m.name);
  } finally {
    await connection`SELECT pg_advisory_unlock(${MIGRATION_LOCK_KEY})`.catch(() => {});
    connection.release();
  }
}

async function apply(connection: postgres.ReservedSql, migration: Migration): Promise<void> {
  const text = await readFile(path.join(SQL_DIR, migration.file), 'utf8');
  // A reserved connection has no begin(), so the transaction is spelled out.
  await connection.unsafe('BEGIN');
  try {
    await connection.unsafe(text);
    await connection`INSERT INTO schema_migrations (version, name)
                     VALUES (${migration.version}, ${migration.name})`;
    await connection.unsafe('COMMIT');
  } catch (error) {
    await connection.unsafe('ROLLBACK').catch(() => {});
    throw new Error(`Migration ${migration.name} failed: ${(error as Error).message}`, {
      cause: error,
    });
  }
}
