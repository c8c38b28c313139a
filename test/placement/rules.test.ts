import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { domainToUnicode } from 'node:url';
import {
  eligibleWorkers,
  explainNoWorker,
  findMismatch,
  generatedSubdomain,
  hasRoom,
  isPlaced,
  lowestFreePort,
  matchesSelector,
  PlacementPlanner,
  servesProtocol,
  toDnsLabel,
  type Placement,
  type PlacementRequest,
  type Unplaced,
} from '../../src/services/placement.ts';
import type { WorkerAddresses } from '../../src/store/routes.ts';
import type { Candidate } from '../../src/store/workers.ts';

let nextId = 1;

function portWorker(overrides: Partial<Candidate> = {}): Candidate {
  const id = `00000000-0000-0000-0000-${String(nextId++).padStart(12, '0')}`;
  return {
    id,
    authority: `port-${id.slice(-4)}`,
    frontend_mode: 'port',
    hostname: 'proxy.test',
    protocols: ['http'],
    port_range: [20000, 20009],
    wildcard_domain: null,
    advertised_port: null,
    capacity: null,
    labels: {},
    status: 'alive',
    generation: 1,
    routeCount: 0,
    isConnected: true,
    freePorts: 10,
    ...overrides,
  };
}

function wildcardWorker(overrides: Partial<Candidate> = {}): Candidate {
  return portWorker({
    frontend_mode: 'wildcard',
    port_range: null,
    freePorts: null,
    wildcard_domain: '.apps.test',
    ...overrides,
  });
}

function request(overrides: Partial<PlacementRequest> = {}): PlacementRequest {
  return { protocol: 'http', service: 'jupyter', sessionId: 's1', ...overrides };
}

describe('placement rules', () => {
  test('tcp needs a port-mode worker with tcp', () => {
    assert.equal(servesProtocol(portWorker({ protocols: ['http', 'tcp'] }), 'tcp'), true);
    assert.equal(servesProtocol(portWorker({ protocols: ['http'] }), 'tcp'), false);
    assert.equal(servesProtocol(wildcardWorker({ protocols: ['http', 'tcp'] }), 'tcp'), false);
  });

  test('http-based protocols need an http worker', () => {
    for (const protocol of ['http', 'grpc', 'h2', 'preopen'] as const) {
      assert.equal(servesProtocol(portWorker(), protocol), true, protocol);
      assert.equal(servesProtocol(portWorker({ protocols: ['tcp'] }), protocol), false, protocol);
    }
  });

  test('room means capacity left and a free port', () => {
    assert.equal(hasRoom(portWorker()), true);
    assert.equal(hasRoom(portWorker({ capacity: 2, routeCount: 2 })), false);
    assert.equal(hasRoom(portWorker({ capacity: 3, routeCount: 2 })), true);
    assert.equal(hasRoom(portWorker({ freePorts: 0 })), false);
    assert.equal(hasRoom(wildcardWorker({ routeCount: 10_000 })), true);
  });

  test('selector matches every given label', () => {
    const labels = { zone: 'a', gpu: 'a100' };
    assert.equal(matchesSelector(labels, undefined), true);
    assert.equal(matchesSelector(labels, { zone: 'a' }), true);
    assert.equal(matchesSelector(labels, { zone: 'a', gpu: 'a100' }), true);
    assert.equal(matchesSelector(labels, { zone: 'b' }), false);
    assert.equal(matchesSelector(labels, { zone: 'a', disk: 'ssd' }), false);
  });

  test('mismatch names the first rule a worker breaks', () => {
    const worker = portWorker({ labels: { zone: 'a' } });
    assert.equal(findMismatch(worker, request()), null);
    assert.equal(findMismatch(worker, request({ workerId: 'other' })), 'not_pinned');
    assert.equal(findMismatch(worker, request({ excludeWorkerId: worker.id })), 'excluded');
    assert.equal(findMismatch(worker, request({ protocol: 'tcp' })), 'protocol');
    assert.equal(findMismatch(worker, request({ subdomain: 'x' })), 'mode');
    assert.equal(findMismatch(worker, request({ frontendMode: 'wildcard' })), 'mode');
    assert.equal(findMismatch(worker, request({ selector: { zone: 'b' } })), 'selector');
    assert.equal(findMismatch(worker, request({ port: 30000 })), 'port_range');
    assert.equal(findMismatch({ ...worker, capacity: 0 }, request()), 'full');
  });

  test('eligible workers come least loaded first, then by authority', () => {
    const busy = portWorker({ authority: 'a-busy', routeCount: 5 });
    const idleB = portWorker({ authority: 'b-idle', routeCount: 1 });
    const idleA = portWorker({ authority: 'a-idle', routeCount: 1 });
    const full = portWorker({ authority: 'full', routeCount: 0, freePorts: 0 });
    const order = eligibleWorkers([busy, idleB, full, idleA], request()).map((w) => w.authority);
    assert.deepEqual(order, ['a-idle', 'b-idle', 'a-busy']);
  });

  test('no live worker explains itself', () => {
    assert.match(explainNoWorker([], request()), /No worker is alive/);
  });

  test('explanation counts each reason', () => {
    const workers = [
      portWorker({ freePorts: 0 }),
      portWorker({ capacity: 1, routeCount: 1 }),
      portWorker({ protocols: ['http'] }),
    ];
    const text = explainNoWorker(workers, request({ protocol: 'tcp' }));
    assert.match(text, /of 3 live workers: 3 without tcp in port mode/);
    const full = explainNoWorker(workers.slice(0, 2), request());
    assert.match(full, /of 2 live workers: 2 full \(capacity reached or no free port\)/);
  });

  test('explanation names the selector', () => {
    const text = explainNoWorker([portWorker()], request({ selector: { gpu: 'h100' } }));
    assert.match(text, /1 not matching worker_selector \{"gpu":"h100"\}/);
  });

  test('explanation of a pinned worker names it', () => {
    const worker = portWorker({ authority: 'pinned', protocols: ['http'] });
    const text = explainNoWorker([worker], request({ workerId: worker.id, protocol: 'tcp' }));
    assert.equal(text, 'Worker pinned cannot take this route: it is without tcp in port mode.');
  });

  test('lowest free port skips used ones', () => {
    assert.equal(lowestFreePort([100, 105], new Set([100, 101, 103])), 102);
    assert.equal(lowestFreePort([100, 102], new Set([100, 101, 102])), null);
    assert.equal(lowestFreePort([100, 105], new Set([100]), 104), 104);
  });
});

describe('subdomain normalisation', () => {
  test('lower case', () => {
    assert.equal(toDnsLabel('Jupyter-S1'), 'jupyter-s1');
  });

  test('invalid characters become one hyphen', () => {
    assert.equal(toDnsLabel('lab_team a/s.1'), 'lab-team-a-s-1');
    assert.equal(toDnsLabel('a__--__b'), 'a-b');
  });

  test('no hyphen at either end', () => {
    assert.equal(toDnsLabel('--web--'), 'web');
    assert.equal(toDnsLabel('_web_'), 'web');
  });

  test('nothing usable becomes route', () => {
    assert.equal(toDnsLabel('___'), 'route');
    assert.equal(toDnsLabel(''), 'route');
  });

  test('non-ASCII label becomes punycode', () => {
    const label = toDnsLabel('Jupyter-Müller');
    assert.equal(label, 'xn--jupyter-mller-4ob');
    assert.equal(domainToUnicode(label), 'jupyter-müller');
  });

  test('non-ASCII with invalid characters', () => {
    const label = toDnsLabel('lab 日本語/1');
    assert.match(label, /^xn--[a-z0-9-]+$/);
    assert.equal(domainToUnicode(label), 'lab-日本語-1');
  });

  test('long ASCII text is cut to 63', () => {
    const label = toDnsLabel(`${'a'.repeat(62)}-b-c`);
    assert.equal(label, 'a'.repeat(62));
    assert.equal(toDnsLabel('x'.repeat(100)).length, 63);
  });

  test('long non-ASCII text stays valid punycode', () => {
    const label = toDnsLabel('ü'.repeat(80));
    assert.ok(label.length <= 63, `${label} is ${label.length} long`);
    assert.match(label, /^xn--/);
    assert.match(domainToUnicode(label), /^ü+$/);
  });

  test('label IDNA rejects drops its non-ASCII part', () => {
    const label = toDnsLabel('\u0301abc');
    assert.equal(label, 'abc');
  });

  test('generated name joins service and session', () => {
    assert.equal(generatedSubdomain('jupyter', 'Team A/S1'), 'jupyter-team-a-s1');
  });

  test('suffixed name stays within 63', () => {
    const name = generatedSubdomain('jupyter', 's'.repeat(100), 'abc123');
    assert.equal(name.length, 63);
    assert.ok(name.endsWith('-abc123'));
  });
});

/** Builds a planner over fixed workers whose stored addresses are `stored`. */
function plannerFor(workers: Candidate[], stored: Record<string, Array<[number, string]>> = {}) {
  let loads = 0;
  const planner = new PlacementPlanner(workers, async (ids) => {
    loads += 1;
    const result = new Map<string, WorkerAddresses>();
    for (const id of ids) {
      result.set(id, { ports: new Map(stored[id] ?? []), subdomains: new Map() });
    }
    return result;
  });
  return { planner, loads: () => loads };
}

function placed(result: Placement | Unplaced): Placement {
  assert.ok(isPlaced(result), `not placed: ${JSON.stringify(result)}`);
  return result;
}

describe('placement planner', () => {
  test('spreads routes over the least loaded worker', async () => {
    const a = portWorker({ authority: 'a', routeCount: 2 });
    const b = portWorker({ authority: 'b', routeCount: 0 });
    const { planner } = plannerFor([a, b]);
    const authorities = [];
    for (let i = 0; i < 4; i++) {
      authorities.push(placed(await planner.place(request(), `r${i}`)).worker.authority);
    }
    assert.deepEqual(authorities, ['b', 'b', 'a', 'b']);
  });

  test('prefers connected workers over idle ones', async () => {
    const idle = portWorker({ authority: 'idle', routeCount: 0, isConnected: false });
    const busy = portWorker({ authority: 'busy', routeCount: 5 });
    const { planner } = plannerFor([idle, busy]);
    assert.equal(placed(await planner.place(request(), 'r1')).worker.authority, 'busy');

    const full = portWorker({ authority: 'full', routeCount: 10, freePorts: 0 });
    const fallback = plannerFor([idle, full]).planner;
    assert.equal(placed(await fallback.place(request(), 'r2')).worker.authority, 'idle');
  });

  test('hands out the lowest free ports in order', async () => {
    const worker = portWorker();
    const { planner } = plannerFor([worker], { [worker.id]: [[20000, 'x'], [20002, 'y']] });
    const ports = [];
    for (let i = 0; i < 3; i++) ports.push(placed(await planner.place(request(), `r${i}`)).port);
    assert.deepEqual(ports, [20001, 20003, 20004]);
  });

  test('reads addresses once per worker', async () => {
    const worker = portWorker();
    const { planner, loads } = plannerFor([worker]);
    await planner.preload([worker.id]);
    for (let i = 0; i < 5; i++) placed(await planner.place(request(), `r${i}`));
    assert.equal(loads(), 1);
  });

  test('stops at capacity', async () => {
    const worker = portWorker({ capacity: 2 });
    const { planner } = plannerFor([worker]);
    placed(await planner.place(request(), 'r1'));
    placed(await planner.place(request(), 'r2'));
    const third = await planner.place(request(), 'r3');
    assert.equal(isPlaced(third), false);
    assert.equal((third as Unplaced).kind, 'no_worker');
  });

  test('stops when the port range is used up', async () => {
    const worker = portWorker({ port_range: [20000, 20001], freePorts: 2 });
    const { planner } = plannerFor([worker]);
    placed(await planner.place(request(), 'r1'));
    placed(await planner.place(request(), 'r2'));
    assert.equal(isPlaced(await planner.place(request(), 'r3')), false);
  });

  test('requested port taken names its route', async () => {
    const worker = portWorker();
    const { planner } = plannerFor([worker], { [worker.id]: [[20005, 'holder']] });
    const result = await planner.place(request({ port: 20005 }), 'r1');
    assert.equal((result as Unplaced).kind, 'conflict');
    assert.equal((result as Unplaced).conflictingRouteId, 'holder');
  });

  test('released port can be requested again', async () => {
    const worker = portWorker();
    const { planner } = plannerFor([worker], { [worker.id]: [[20005, 'old']] });
    await planner.preload([worker.id]);
    planner.release(worker.id, { port: 20005, subdomain: null });
    assert.equal(placed(await planner.place(request({ port: 20005 }), 'new')).port, 20005);
  });

  test('same port requested twice in one plan', async () => {
    const worker = portWorker();
    const { planner } = plannerFor([worker]);
    placed(await planner.place(request({ port: 20003 }), 'first'));
    const second = await planner.place(request({ port: 20003 }), 'second');
    assert.equal((second as Unplaced).kind, 'conflict');
    assert.equal((second as Unplaced).conflictingRouteId, undefined);
  });

  test('moved route keeps its subdomain when free', async () => {
    const worker = wildcardWorker();
    const { planner } = plannerFor([worker]);
    const result = placed(await planner.place(request({ preferredSubdomain: 'custom' }), 'r1'));
    assert.equal(result.subdomain, 'custom');
    assert.equal(result.url, 'http://custom.apps.test');
  });

  test('taken generated subdomain gets a suffix', async () => {
    const worker = wildcardWorker();
    const { planner } = plannerFor([worker]);
    const first = placed(await planner.place(request(), 'r1'));
    const second = placed(await planner.place(request(), 'r2'));
    assert.equal(first.subdomain, 'jupyter-s1');
    assert.match(second.subdomain ?? '', /^jupyter-s1-[0-9a-f]{6}$/);
  });
});
