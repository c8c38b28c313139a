// Measures how long a route takes from `POST /routes` until a connected
// worker has it in its table, on the PostgreSQL of the test suites. Stops by itself.
import { startTestCoordinator } from '../test/helpers/coordinator.ts';
import { ScriptedWorker } from '../test/helpers/scripted-worker.ts';

const ROUTES = 200;

const coordinator = await startTestCoordinator();
const worker = new ScriptedWorker({ coordinatorUrl: coordinator.url, workerToken: coordinator.tokens.worker });
await worker.register();
await worker.connect();
await worker.waitFor(() => worker.messages.length > 0, 10_000, 'snapshot');

const samplesMs: number[] = [];
for (let i = 0; i < ROUTES; i++) {
  const startedAt = performance.now();
  const created = await coordinator.api('POST', '/routes', {
    session_id: `bench-${i}`,
    service: 'jupyter',
    backends: [{ host: '192.0.2.10', port: 8080 }],
  });
  await worker.waitFor(() => worker.table.has(created.body.id), 5000, 'route on the worker');
  samplesMs.push(performance.now() - startedAt);
}
samplesMs.sort((a, b) => a - b);
const at = (q: number) => samplesMs[Math.min(samplesMs.length - 1, Math.floor(q * samplesMs.length))].toFixed(2);
console.log(`POST /routes until the route is in the worker's table, ${ROUTES} routes one at a time:`);
console.log(`p50 ${at(0.5)} ms, p99 ${at(0.99)} ms, max ${at(1)} ms`);
await worker.close();
await coordinator.stop();
