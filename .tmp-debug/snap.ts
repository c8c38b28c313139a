import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { WebSocket } from 'ws';
import { insertRoutes } from '../test/helpers/bulk-routes.ts';
import { createTestDatabase } from '../test/helpers/database.ts';
import { BenchWorker, startCoordinatorChild } from '../bench/sync-support.ts';
const db = await createTestDatabase();
const dataDir = await mkdtemp(path.join(tmpdir(), 'dbg-'));
const c = await startCoordinatorChild({ databaseUrl: db.url!, dataDir });
const w = new BenchWorker();
await w.register(c.url, c.tokens.worker, { authority: 'b0', frontend_mode: 'wildcard', hostname: 'h', wildcard_domain: '.apps.example.test' });
const reg = await (await fetch(`${c.url}/workers/register`, { method: 'POST', headers: { authorization: `Bearer ${c.tokens.worker}`, 'content-type': 'application/json' }, body: JSON.stringify({ authority: 'b0', frontend_mode: 'wildcard', hostname: 'h', wildcard_domain: '.apps.example.test' }) })).json();
await insertRoutes(db.url!, { id: w.id, frontendMode: 'wildcard', hostname: 'h', wildcardDomain: '.apps.example.test' }, 100000);
for (let run = 0; run < 3; run++) {
  const ws = new WebSocket(`${c.url.replace('http', 'ws')}/workers/stream`, { headers: { authorization: `Bearer ${reg.session_token}` } });
  await new Promise((r) => ws.once('open', r));
  const t0 = performance.now();
  const times: number[] = [];
  let parseMs = 0;
  await new Promise<void>((resolve) => {
    ws.on('message', (data: Buffer) => {
      times.push(performance.now() - t0);
      const p0 = performance.now();
      const m = JSON.parse(data.toString());
      parseMs += performance.now() - p0;
      if (m.type === 'snapshot' && !m.more) resolve();
    });
    ws.send(JSON.stringify({ type: 'hello', protocol_version: 1 }));
  });
  console.log('first', times[0].toFixed(0), 'last', times.at(-1)!.toFixed(0), 'n', times.length, 'parse', parseMs.toFixed(0));
  ws.close();
  await new Promise((r) => setTimeout(r, 300));
}
await c.stop(); await db.drop();
process.exit(0);
