import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { insertRoutesSpread } from '../test/helpers/bulk-routes.ts';
import { createTestDatabase } from '../test/helpers/database.ts';
import { BenchWorker, callApi, startCoordinatorChild } from '../bench/sync-support.ts';
const N = Number(process.env.N ?? 100);
const db = await createTestDatabase();
const dataDir = await mkdtemp(path.join(tmpdir(), 'dbg-'));
const c = await startCoordinatorChild({ databaseUrl: db.url!, dataDir, env: { APPPROXY_LOG_LEVEL: 'info' } });
const ws = Array.from({ length: N }, () => new BenchWorker());
await Promise.all(ws.map((w, i) => w.register(c.url, c.tokens.worker, { authority: `b${i}`, frontend_mode: 'wildcard', hostname: 'h', wildcard_domain: `.w${i}.apps.example.test` })));
const routes = await insertRoutesSpread(db.url!, ws.map((w, i) => ({ id: w.id, frontendMode: 'wildcard' as const, hostname: 'h', wildcardDomain: `.w${i}.apps.example.test` })), 50000 / N);
await Promise.all(ws.map((w) => w.connect(c.url, false)));
console.log('connected', ws.map(w => w.table.size).reduce((a, b) => a + b));
let got = 0;
ws[0].onArrival = (a) => { got++; console.log('arrival', a.type, a.revision, a.routes.length); };
for (let i = 0; i < 3; i++) {
  const r = await callApi(c.url, c.tokens.manager, 'PATCH', `/routes/${routes[i].id}`, { backends: [{ host: '10.9.0.1', port: 1001 + i }] });
  console.log('patched', r.revision, r.worker_id === ws[0].id);
  await new Promise((res) => setTimeout(res, 300));
}
console.log('got', got, 'w0 revision', ws[0].revision);
const st = await callApi(c.url, c.tokens.manager, 'GET', `/workers/${ws[0].id}`);
console.log(JSON.stringify({ status: st.status, connected: st.connected, target: st.target_revision, applied: st.applied_revision }));
console.log(c.output().split('\n').filter(l => !l.includes('sent snapshot') && !l.includes('worker connected') && !l.includes('"request"')).slice(-15).join('\n').slice(0, 5000));
await c.stop(); await db.drop();
process.exit(0);
