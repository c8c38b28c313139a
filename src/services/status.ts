import { readMeta } from '../store/changes.ts';
import type { Sql } from '../store/database.ts';
import { workerCounts } from '../store/workers.ts';

export interface Health {
  status: 'ok' | 'unavailable';
  db: 'up' | 'down';
  epoch?: string;
  revision?: number;
  workers?: { alive: number; lost: number };
}

/** Reads whether the database responds, with the revision and worker counts. */
export async function readHealth(sql: Sql, timeoutMs: number): Promise<Health> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('health check timed out')), timeoutMs);
  });
  try {
    const [meta, workers] = await Promise.race([
      Promise.all([readMeta(sql), workerCounts(sql)]),
      timeout,
    ]);
    return { status: 'ok', db: 'up', epoch: meta.epoch, revision: meta.revision, workers };
  } catch {
    return { status: 'unavailable', db: 'down' };
  } finally {
    clearTimeout(timer);
  }
}
