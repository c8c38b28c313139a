// Measures commit-to-ack latency when writes go through one coordinator and
// the workers are connected to another on the same PostgreSQL. Stops by
// itself; writes its section of docs/benchmarks.md.
import os from 'node:os';
import { measureLatency, summarize } from './sync-latency.ts';
import { machineFacts, quantile, writeSection } from './support.ts';

const loadBefore = os.loadavg()[0].toFixed(2);
const results = await measureLatency({ crossInstance: true });
const loadAfter = os.loadavg()[0].toFixed(2);

const rows = results.map((result) => {
  const p99 = quantile([...result.commitToAck].sort((a, b) => a - b), 0.99);
  const verdict = p99 < 20 ? 'met' : 'missed';
  return (
    `| ${result.label} (${result.requestToAck.length}) | ${summarize(result.commitToAck)} | ` +
    `${summarize(result.requestToAck)} | ${verdict} |`
  );
});

const markdown = `
## Across coordinators

Machine: ${machineFacts()}. One-minute load average ${loadBefore} before and ${loadAfter}
after. Command: \`make bench\` (\`bench/cross-instance.ts\`). Two coordinator processes share
the local PostgreSQL: 100 workers with 50,000 routes are connected to the first, and every
write goes through the second, so each change reaches the workers through \`LISTEN\`/\`NOTIFY\`
and the first coordinator's change feed. Commit time is when the benchmark heard the
transaction's \`NOTIFY\` on a connection of its own. Each cell: p50, p99 and max in ms;
target: commit → ack p99 under 20 ms.

| writes (count) | commit → ack | request → ack | target |
|---|---|---|---|
${rows.join('\n')}
`;
console.log(markdown);
await writeSection('cross', markdown);
