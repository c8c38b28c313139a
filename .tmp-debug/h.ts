import { hash, createHash, randomUUID } from 'node:crypto';
const rows = Array.from({length: 100000}, (_, i) => ({ id: randomUUID(), revision: i + 1 }));
for (let k = 0; k < 4; k++) {
  let t = performance.now();
  for (const r of rows) hash('sha256', `${r.id}:${r.revision}`, 'buffer');
  const a = performance.now() - t;
  t = performance.now();
  for (const r of rows) createHash('sha256').update(`${r.id}:${r.revision}`).digest();
  console.log('hash', a.toFixed(0), 'createHash', (performance.now() - t).toFixed(0));
}
