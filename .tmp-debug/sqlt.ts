import postgres from 'postgres';
import { createTestDatabase } from '../test/helpers/database.ts';
import { openDatabase } from '../src/store/database.ts';
import { migrate } from '../src/store/migrate.ts';
import { workerRouteTexts } from '../src/store/routes.ts';
import { insertRoutes } from '../test/helpers/bulk-routes.ts';
import { randomUUID } from 'node:crypto';
const t = await createTestDatabase();
const db = await openDatabase({ databaseUrl: t.url, dataDir: t.dataDir, poolSize: 2, connectTimeoutS: 2, statementTimeoutMs: 30000 });
await migrate(db.sql);
const id = randomUUID();
await db.sql`INSERT INTO workers (id, authority, frontend_mode, hostname, protocols, status, generation, registered_at, wildcard_domain) VALUES (${id}, 'x', 'wildcard', 'h', '{http}', 'alive', 1, now(), '.a.example.test')`;
await insertRoutes(t.url!, { id, frontendMode: 'wildcard', hostname: 'h', wildcardDomain: '.a.example.test' }, 100000);
await db.sql`ANALYZE`;
for (const size of [500, 2000, 5000]) {
  const t0 = performance.now();
  let after = 0, n = 0;
  for (;;) { const page = await workerRouteTexts(db.sql, id, after, size); n += page.length; if (page.length < size) break; after = page.at(-1)!.revision; }
  console.log('page', size, 'all', n, (performance.now() - t0).toFixed(0), 'ms');
}
const [plan] = await db.sql.unsafe(`EXPLAIN ANALYZE SELECT r.revision FROM routes r JOIN workers w ON w.id = r.worker_id WHERE r.worker_id = $1 AND r.revision > 0 ORDER BY r.revision LIMIT 2000`, [id]);
console.log((await db.sql.unsafe(`EXPLAIN ANALYZE SELECT r.revision FROM routes r JOIN workers w ON w.id = r.worker_id WHERE r.worker_id = $1 AND r.revision > 0 ORDER BY r.revision LIMIT 2000`, [id])).map((r: any) => r['QUERY PLAN']).join('\n'));
await db.close(); await t.drop();
