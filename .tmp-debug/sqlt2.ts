import { createTestDatabase } from '../test/helpers/database.ts';
import { openDatabase } from '../src/store/database.ts';
import { migrate } from '../src/store/migrate.ts';
import { insertRoutes } from '../test/helpers/bulk-routes.ts';
import { randomUUID } from 'node:crypto';
const t = await createTestDatabase();
const db = await openDatabase({ databaseUrl: t.url, dataDir: t.dataDir, poolSize: 2, connectTimeoutS: 2, statementTimeoutMs: 30000 });
await migrate(db.sql);
const id = randomUUID();
await db.sql`INSERT INTO workers (id, authority, frontend_mode, hostname, protocols, status, generation, registered_at, wildcard_domain) VALUES (${id}, 'x', 'wildcard', 'h', '{http}', 'alive', 1, now(), '.a.example.test')`;
await insertRoutes(t.url!, { id, frontendMode: 'wildcard', hostname: 'h', wildcardDomain: '.a.example.test' }, 100000);
const variants: Record<string, string> = {
  star: `SELECT r.* FROM routes r WHERE r.worker_id = $1`,
  rowjson_plain: `SELECT row_to_json(r)::text FROM routes r WHERE r.worker_id = $1`,
  tochar: `SELECT to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') FROM routes r WHERE r.worker_id = $1`,
  tojson_ts: `SELECT to_json(r.created_at)::text FROM routes r WHERE r.worker_id = $1`,
  count: `SELECT count(*) FROM routes r WHERE r.worker_id = $1`,
};
for (const [name, q] of Object.entries(variants)) {
  const t0 = performance.now();
  await db.sql.unsafe(q, [id]);
  const t1 = performance.now();
  const ex = await db.sql.unsafe(`EXPLAIN ANALYZE ${q}`, [id]);
  console.log(name, 'client', (t1 - t0).toFixed(0), 'ms;', ex.at(-1)!['QUERY PLAN']);
}
await db.close(); await t.drop();
