// Prints where a V8 CPU profile (from `node --cpu-prof`) spent its time: the
// share of idle time, and the functions with the most self time.
// Usage: node --import tsx bench/profile-summary.ts FILE.cpuprofile [TOP]
import { readFile } from 'node:fs/promises';
import path from 'node:path';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
}

interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const [file, top = '25'] = process.argv.slice(2);
if (!file) {
  console.error('usage: bench/profile-summary.ts FILE.cpuprofile [TOP]');
  process.exit(2);
}
const profile = JSON.parse(await readFile(file, 'utf8')) as Profile;
const nodes = new Map(profile.nodes.map((node) => [node.id, node]));
const selfUs = new Map<string, number>();
let totalUs = 0;
profile.samples.forEach((id, i) => {
  const frame = (nodes.get(id) as ProfileNode).callFrame;
  const where = frame.url ? `${path.basename(frame.url)}:${frame.lineNumber + 1}` : '';
  const key = `${frame.functionName || '(anonymous)'} ${where}`.trim();
  const delta = profile.timeDeltas[i] ?? 0;
  selfUs.set(key, (selfUs.get(key) ?? 0) + delta);
  totalUs += delta;
});
const busyUs = totalUs - (selfUs.get('(idle)') ?? 0);
const seconds = (us: number) => (us / 1e6).toFixed(1);
console.log(`profile ${path.basename(file)}: ${seconds(totalUs)} s, busy ${seconds(busyUs)} s`);
const ranked = [...selfUs].filter(([key]) => key !== '(idle)').sort((a, b) => b[1] - a[1]);
for (const [key, us] of ranked.slice(0, Number(top))) {
  const share = ((100 * us) / busyUs).toFixed(1).padStart(5);
  console.log(`${share}%  ${(us / 1000).toFixed(0).padStart(6)} ms  ${key}`);
}
