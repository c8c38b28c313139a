import assert from 'node:assert/strict';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { ScriptedWorker, type ScriptedWorkerOptions } from '../helpers/scripted-worker.ts';

/** Polls `probe` until it returns a value other than undefined; fails after `timeoutMs`. */
export async function eventually<T>(
  what: string,
  timeoutMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) assert.fail(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Registers a worker over REST only, with no session; `extra` overrides body fields. */
export async function registerWorker(
  coordinator: TestCoordinator,
  authority: string,
  extra: Record<string, unknown> = {},
): Promise<any> {
  const body = {
    authority,
    frontend_mode: 'port',
    hostname: `${authority}.example.test`,
    port_range: [20000, 20099],
    ...extra,
  };
  const token = coordinator.tokens.worker;
  const response = await coordinator.api('POST', '/workers/register', body, token);
  assert.ok(response.status < 300, `register ${authority}: ${JSON.stringify(response.body)}`);
  return response.body.worker;
}

/** Builds a route body with one backend; `extra` overrides fields. */
export function routeBody(sessionId: string, service: string, extra: Record<string, unknown> = {}) {
  return {
    session_id: sessionId,
    service,
    backends: [{ host: '192.0.2.10', port: 8080 }],
    ...extra,
  };
}

/** Deletes every route and deregisters every worker, so the next test starts empty. */
export async function resetState(coordinator: TestCoordinator): Promise<void> {
  const routes = await coordinator.api('GET', '/routes?limit=1000');
  const sessions = new Set<string>(routes.body.routes.map((route: any) => route.session_id));
  for (const session of sessions) {
    await coordinator.api('DELETE', `/sessions/${encodeURIComponent(session)}/routes`);
  }
  const workers = await coordinator.api('GET', '/workers');
  for (const worker of workers.body.workers) {
    if (worker.status !== 'deregistered') await coordinator.api('DELETE', `/workers/${worker.id}`);
  }
}

/** Returns the current revision, to read only the events of one test later. */
export async function currentRevision(coordinator: TestCoordinator): Promise<number> {
  return (await coordinator.api('GET', '/events?limit=1')).body.revision;
}

/** Returns the stored events of `type` after revision `after`, oldest first. */
export async function eventsOfType(
  coordinator: TestCoordinator,
  type: string,
  after = 0,
): Promise<any[]> {
  const events: any[] = [];
  let since = after;
  for (;;) {
    const page = await coordinator.api('GET', `/events?since=${since}&limit=1000`);
    events.push(...page.body.events.filter((event: any) => event.type === type));
    if (page.body.events.length < 1000) return events;
    since = page.body.events.at(-1).revision;
  }
}

/** Starts a scripted worker that has registered and received its first snapshot. */
export async function connectedWorker(
  coordinator: TestCoordinator,
  options: Partial<ScriptedWorkerOptions> & { authority: string },
  extra: Record<string, unknown> = {},
): Promise<ScriptedWorker> {
  const worker = new ScriptedWorker({
    coordinatorUrl: coordinator.url,
    workerToken: coordinator.tokens.worker,
    ...options,
  });
  await worker.register(extra);
  await worker.connect();
  await worker.waitFor(() => worker.messages.some((m) => m.type === 'snapshot'), 5000, 'snapshot');
  return worker;
}

/** Reads a route and returns it once its status is `status`. */
export function routeWithStatus(
  coordinator: TestCoordinator,
  id: string,
  status: string,
  timeoutMs = 3000,
): Promise<any> {
  return eventually(`route ${id} ${status}`, timeoutMs, async () => {
    const route = await coordinator.api('GET', `/routes/${id}`);
    return route.body.status === status ? route.body : undefined;
  });
}
