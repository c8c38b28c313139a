import { randomUUID } from 'node:crypto';
import postgres from 'postgres';
import type { Route } from '../../proto/index.ts';
import type { Sql } from '../../src/store/database.ts';
import { Writer, wireText, type WriteTx } from '../../src/store/writer.ts';

// Inserts many routes at once for tests and benchmarks of large tables. It
// writes through the coordinator's own group-commit writer, so every route
// takes a revision and a change-log row and updates its worker's target
// revision and table digest exactly as a REST write would. Only placement
// and validation are skipped.

/** Routes written per transaction. */
const ROUTES_PER_TRANSACTION = 5000;

export interface BulkWorker {
  id: string;
  frontendMode: 'port' | 'wildcard';
  hostname: string;
  /** First port handed out in port mode. */
  firstPort?: number;
  wildcardDomain?: string;
}

/**
 * Returns a typical route: two backends, three labels, and about 300 bytes of
 * JSON in its create request (the stored route adds ids, URL and times).
 */
export function typicalRoute(
  worker: BulkWorker,
  index: number,
  revision: number,
  now: string,
): Route {
  const port = worker.frontendMode === 'port' ? (worker.firstPort ?? 20000) + index : null;
  const subdomain = worker.frontendMode === 'port' ? null : `lab-bulk-${index}`;
  const url =
    port === null
      ? `http://${subdomain}${worker.wildcardDomain}`
      : `http://${worker.hostname}:${port}`;
  return {
    id: randomUUID(),
    session_id: `bulk-${worker.id.slice(0, 8)}-${index}`,
    service: 'jupyter',
    protocol: 'http',
    mode: 'interactive',
    backends: [
      { host: `10.0.${index % 250}.${(index >> 8) % 250}`, port: 8888, weight: 1 },
      { host: `10.1.${index % 250}.${(index >> 8) % 250}`, port: 8888, weight: 1 },
    ],
    worker_id: worker.id,
    port,
    subdomain,
    url,
    open_to_public: false,
    allowed_client_ips: [],
    labels: { team: 'research', env: 'test', owner: `user-${index % 97}` },
    status: 'pending',
    revision,
    created_at: now,
    updated_at: now,
  };
}

/**
 * Creates `count` routes on `worker` in transactions of 5,000, on the
 * database at `databaseUrl`, and returns them.
 */
export async function insertRoutes(
  databaseUrl: string,
  worker: BulkWorker,
  count: number,
): Promise<Route[]> {
  return insertRoutesSpread(databaseUrl, [worker], count);
}

/**
 * Creates `perWorker` routes on each of `workers` in transactions of 5,000,
 * on the database at `databaseUrl`, and returns them.
 */
export async function insertRoutesSpread(
  databaseUrl: string,
  workers: BulkWorker[],
  perWorker: number,
): Promise<Route[]> {
  const slots = workers.flatMap((worker) => {
    return Array.from({ length: perWorker }, (_, index) => ({ worker, index }));
  });
  const sql = postgres(databaseUrl, { max: 1, onnotice: () => {} }) as unknown as Sql;
  const writer = new Writer(sql, { maxBatch: 1, timeoutMs: 120_000, onCommit: () => {} });
  const routes: Route[] = [];
  try {
    for (let start = 0; start < slots.length; start += ROUTES_PER_TRANSACTION) {
      const batch = slots.slice(start, start + ROUTES_PER_TRANSACTION);
      routes.push(...(await writer.run((tx) => insertBatch(tx, batch))));
    }
  } finally {
    await sql.end({ timeout: 5 });
  }
  return routes;
}

async function insertBatch(
  tx: WriteTx,
  slots: Array<{ worker: BulkWorker; index: number }>,
): Promise<Route[]> {
  const now = tx.now.toISOString();
  const routes = slots.map(({ worker, index }, i) => {
    return typicalRoute(worker, index, tx.revision + i + 1, now);
  });
  // Each row carries its JSON, as the coordinator's own inserts do, so snapshots stream it.
  const rows = routes.map(({ status: _status, ...row }) => ({ ...row, wire: wireText(row as Route) }));
  await tx.sql`
    INSERT INTO routes
    SELECT * FROM jsonb_populate_recordset(NULL::routes, ${JSON.stringify(rows)}::text::jsonb)`;
  for (const route of routes) {
    tx.record({
      type: 'route.created',
      route_id: route.id,
      session_id: route.session_id,
      worker_id: route.worker_id,
      route,
    });
  }
  return routes;
}
