import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WebSocket } from 'ws';
import { insertRoutes } from '../test/helpers/bulk-routes.ts';
import { createTestDatabase } from '../test/helpers/database.ts';
import { startSyncCoordinator } from '../test/hub/support.ts';
const db = await createTestDatabase();
const c = await startSyncCoordinator(db, {}, 'warn');
const reg = await (await fetch(`${c.url}/workers/register`, { method: 'POST', headers: { authorization: `Bearer ${c.tokens.worker}`, 'content-type': 'application/json' }, body: JSON.stringify({ authority: 'b0', frontend_mode: 'wildcard', hostname: 'h', wildcard_domain: '.apps.example.test' }) })).json();
await insertRoutes(db.url!, { id: reg.worker.id, frontendMode: 'wildcard', hostname: 'h', wildcardDomain: '.apps.example.test' }, 100000);
for (let run = 0; run < 3; run++) {
  const ws = new WebSocket(`${c.url.replace('http', 'ws')}/workers/stream`, { headers: { authorization: `Bearer ${reg.session_token}` } });
  await new Promise((r) => ws.once('open', r));
  const t0 = performance.now();
  let n = 0;
  await new Promise<void>((resolve) => {
    ws.on('message', (data: Buffer) => { n++; if (!data.toString().includes('"more":true')) resolve(); });
    ws.send(JSON.stringify({ type: 'hello', protocol_version: 1 }));
  });
  console.log('client total', (performance.now() - t0).toFixed(0), n);
  ws.close();
  await new Promise((r) => setTimeout(r, 300));
}
await c.close(); await db.drop();
process.exit(0);
