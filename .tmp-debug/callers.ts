import { readFile } from 'node:fs/promises';
import path from 'node:path';
const [file, target, depth = '4'] = process.argv.slice(2);
const p = JSON.parse(await readFile(file, 'utf8'));
const nodes = new Map<number, any>(p.nodes.map((n: any) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const name = (n: any) => `${n.callFrame.functionName || '(anon)'} ${path.basename(n.callFrame.url)}:${n.callFrame.lineNumber + 1}`;
const agg = new Map<string, number>();
p.samples.forEach((id: number, i: number) => {
  const n = nodes.get(id);
  if (n.callFrame.functionName !== target) return;
  const chain: string[] = [];
  let cur = parent.get(id);
  for (let d = 0; d < Number(depth) && cur !== undefined; d++) { chain.push(name(nodes.get(cur))); cur = parent.get(cur); }
  const key = chain.join(' < ');
  agg.set(key, (agg.get(key) ?? 0) + (p.timeDeltas[i] ?? 0));
});
for (const [k, v] of [...agg].sort((a, b) => b[1] - a[1]).slice(0, 12)) console.log((v / 1000).toFixed(0).padStart(6), 'ms', k);
