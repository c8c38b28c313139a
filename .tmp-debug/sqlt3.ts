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
for (let run = 0; run < 0; run++) {
  const t0 = performance.now();
  const times: number[] = [];
  await db.sql.begin('ISOLATION LEVEL REPEATABLE READ READ ONLY', async (tx) => {
    for (let after = 0; ; ) { const a = performance.now(); const page = await workerRouteTexts(tx, id, after, 2000); times.push(performance.now() - a); if (page.length < 2000) break; after = page.at(-1)!.revision; }
  });
  console.log('run', run, (performance.now() - t0).toFixed(0), 'ms; pages', times.map((x) => x.toFixed(0)).join(' '));
}
const { selectRouteJsonPageForDebug } = await import('../src/store/routes.ts') as any;
const ex = await db.sql.unsafe(`EXPLAIN ANALYZE ${selectRouteJsonPageForDebug(2000)}`, [id, 50000]);
console.log(ex.map((r: any) => r['QUERY PLAN']).join('\n'));
await db.close(); await t.drop();
