import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { Route, RouteEvent, Worker } from '../../proto/index.ts';
import { renderRoutesTable } from '../../src/cli/commands/routes.ts';
import { describeHealth, renderStatusTable } from '../../src/cli/commands/status.ts';
import { describeFrontend, renderWorkersTable } from '../../src/cli/commands/workers.ts';
import { parseEvent } from '../../src/cli/event-stream.ts';
import {
  createPalette,
  formatDuration,
  formatEvent,
  renderTable,
  shouldUseColor,
} from '../../src/cli/format.ts';

const PLAIN = createPalette(false);
const COLOURED = createPalette(true);
const ANSI_ESCAPE = /\x1b\[/;
const NOW_MS = Date.parse('2026-01-02T03:04:10.000Z');

function makeRoute(overrides: Partial<Route> = {}): Route {
  return {
    id: '6f1c2a4e-8d3b-4c5a-9e7f-0a1b2c3d4e5f',
    session_id: 's1',
    service: 'jupyter',
    protocol: 'http',
    mode: 'interactive',
    backends: [{ host: '10.0.0.5', port: 8888, weight: 1 }],
    worker_id: 'a0000000-0000-4000-8000-000000000001',
    port: 21000,
    subdomain: null,
    url: 'http://proxy-a:21000',
    open_to_public: false,
    allowed_client_ips: [],
    labels: {},
    status: 'active',
    revision: 42,
    created_at: '2026-01-02T03:04:05.000Z',
    updated_at: '2026-01-02T03:04:05.000Z',
    ...overrides,
  };
}

function makeWorker(overrides: Partial<Worker> = {}): Worker {
  return {
    id: 'a0000000-0000-4000-8000-000000000001',
    authority: 'proxy-a',
    frontend_mode: 'port',
    hostname: 'proxy-a',
    protocols: ['http'],
    port_range: [21000, 21099],
    wildcard_domain: null,
    advertised_port: null,
    capacity: null,
    labels: {},
    status: 'alive',
    connected: true,
    generation: 1,
    registered_at: '2026-01-02T03:00:00.000Z',
    last_heartbeat_at: '2026-01-02T03:04:07.000Z',
    route_count: 3,
    target_revision: 42,
    applied_revision: 42,
    lag_revisions: 0,
    lag_ms: 0,
    last_ack_at: '2026-01-02T03:04:06.000Z',
    last_nack: null,
    instances: [
      {
        instance_id: 'i-1',
        generation: 1,
        connected: true,
        applied_revision: 42,
        last_heartbeat_at: '2026-01-02T03:04:07.000Z',
      },
    ],
    ...overrides,
  };
}

const workerName = (id: string) => (id === makeWorker().id ? 'proxy-a' : id);

describe('formatEvent', () => {
  test('route.created line names time, revision, route, worker and url', () => {
    const event: RouteEvent = {
      revision: 42,
      type: 'route.created',
      at: '2026-01-02T03:04:05.000Z',
      route: makeRoute(),
    };
    const line = formatEvent(event, { palette: PLAIN, workerName });
    assert.equal(
      line,
      '2026-01-02T03:04:05.000Z  r42  route.created        s1/jupyter  worker=proxy-a  ' +
        'http://proxy-a:21000',
    );
  });

  test('route.moved shows the old and the new url', () => {
    const event: RouteEvent = {
      revision: 50,
      type: 'route.moved',
      at: '2026-01-02T03:05:00.000Z',
      route: makeRoute({
        worker_id: 'b0000000-0000-4000-8000-000000000002',
        url: 'http://b:21007',
      }),
      previous: { worker_id: makeWorker().id, port: 21000, url: 'http://proxy-a:21000' },
    };
    const line = formatEvent(event, { palette: PLAIN, workerName });
    assert.match(line, /http:\/\/proxy-a:21000 → http:\/\/b:21007/);
    assert.match(line, /worker=proxy-a → b0000000-0000-4000-8000-000000000002/);
  });

  test('route.deleted shows the reason', () => {
    const event: RouteEvent = {
      revision: 51,
      type: 'route.deleted',
      at: '2026-01-02T03:05:01.000Z',
      route: makeRoute(),
      reason: 'session_ended',
    };
    const line = formatEvent(event, { palette: PLAIN, workerName });
    assert.match(line, /reason=session_ended$/);
  });

  test('worker event names the authority and status', () => {
    const event: RouteEvent = {
      revision: 52,
      type: 'worker.lost',
      at: '2026-01-02T03:05:02.000Z',
      worker: { id: makeWorker().id, authority: 'proxy-a', status: 'lost', generation: 3 },
    };
    const line = formatEvent(event, { palette: PLAIN, workerName });
    assert.match(line, /r52 {2}worker\.lost {10}proxy-a {2}id=a0000000/);
    assert.match(line, /status=lost generation=3|status=lost {2}generation=3/);
  });

  test('plain palette writes no escape codes', () => {
    const event: RouteEvent = { revision: 1, type: 'route.created', at: 'now', route: makeRoute() };
    assert.doesNotMatch(formatEvent(event, { palette: PLAIN, workerName }), ANSI_ESCAPE);
  });

  test('coloured palette colours the event type', () => {
    const event: RouteEvent = { revision: 1, type: 'route.created', at: 'now', route: makeRoute() };
    assert.match(formatEvent(event, { palette: COLOURED, workerName }), ANSI_ESCAPE);
  });
});

describe('shouldUseColor', () => {
  test('terminal without NO_COLOR gets colour', () => {
    assert.equal(shouldUseColor({ isTTY: true }, {}), true);
  });

  test('NO_COLOR turns colour off on a terminal', () => {
    assert.equal(shouldUseColor({ isTTY: true }, { NO_COLOR: '1' }), false);
  });

  test('empty NO_COLOR leaves colour on', () => {
    assert.equal(shouldUseColor({ isTTY: true }, { NO_COLOR: '' }), true);
  });

  test('pipe gets no colour', () => {
    assert.equal(shouldUseColor({ isTTY: false }, {}), false);
    assert.equal(shouldUseColor({}, {}), false);
  });
});

describe('renderTable', () => {
  test('aligns columns and leaves no trailing blanks', () => {
    const table = renderTable(
      [{ header: 'NAME' }, { header: 'COUNT', alignRight: true }, { header: 'NOTE' }],
      [
        ['a', '1', 'x'],
        ['longer', '100', ''],
      ],
      PLAIN,
    );
    assert.equal(table, ['NAME    COUNT  NOTE', 'a           1  x', 'longer    100'].join('\n'));
  });

  test('coloured cells keep the plain column widths', () => {
    const columns = [{ header: 'STATUS' }, { header: 'N' }];
    const coloured = renderTable(columns, [[{ text: 'ok', style: COLOURED.green }, '1']], COLOURED);
    const plain = renderTable(columns, [['ok', '1']], PLAIN);
    assert.match(coloured, ANSI_ESCAPE);
    assert.equal(coloured.replace(/\x1b\[[0-9;]*m/g, ''), plain);
  });
});

describe('command tables', () => {
  test('routes table names workers by authority', () => {
    const table = renderRoutesTable([makeRoute()], new Map([[makeWorker().id, 'proxy-a']]), {
      palette: PLAIN,
    });
    const [header, row] = table.split('\n');
    assert.match(header, /^ID +SESSION +SERVICE +PROTOCOL +WORKER +URL +STATUS +REVISION$/);
    assert.match(row, /s1 +jupyter +http +proxy-a +http:\/\/proxy-a:21000 +active +42$/);
  });

  test('routes table falls back to the worker id', () => {
    const table = renderRoutesTable([makeRoute()], new Map(), { palette: PLAIN });
    assert.match(table, /a0000000-0000-4000-8000-000000000001/);
  });

  test('workers table shows mode and revisions', () => {
    const table = renderWorkersTable([makeWorker()], { palette: PLAIN });
    assert.match(table.split('\n')[1], /proxy-a .* port 21000-21099 +alive +yes +3 +42 +42$/);
  });

  test('wildcard worker frontend names its domain', () => {
    const worker = makeWorker({
      frontend_mode: 'wildcard',
      port_range: null,
      wildcard_domain: '.apps.example.test',
    });
    assert.equal(describeFrontend(worker), 'wildcard .apps.example.test');
  });

  test('status table shows lag, heartbeat age and last nack', () => {
    const worker = makeWorker({
      applied_revision: 40,
      target_revision: 42,
      lag_revisions: 2,
      lag_ms: 1500,
      last_nack: {
        revision: 41,
        reason: 'rejected',
        error: 'port 21000 is in use',
        at: '2026-01-02T03:04:00.000Z',
      },
    });
    const table = renderStatusTable([worker], { palette: PLAIN, nowMs: () => NOW_MS });
    const row = table.split('\n')[1];
    assert.match(row, /2 rev, 1s/);
    assert.match(row, /3s ago/);
    assert.match(row, /r41 rejected 10s ago: port 21000 is in use$/);
  });

  test('status table marks a worker in sync', () => {
    const table = renderStatusTable([makeWorker()], { palette: PLAIN, nowMs: () => NOW_MS });
    assert.match(table.split('\n')[1], / 1\/1 +42 +42 +in sync +3 +3s ago +-$/);
  });

  test('health line names database and revision', () => {
    const health = {
      status: 'ok',
      db: 'up',
      epoch: 'e1',
      revision: 9,
      workers: { alive: 1, lost: 0 },
    };
    assert.equal(
      describeHealth(health, new URL('http://127.0.0.1:6030'), PLAIN),
      'coordinator http://127.0.0.1:6030: ok, database up, revision 9, epoch e1, ' +
        'workers 1 alive, 0 lost',
    );
  });
});

describe('formatDuration', () => {
  const cases: Array<[number, string]> = [
    [0, '0ms'],
    [850, '850ms'],
    [12_000, '12s'],
    [184_000, '3m 4s'],
    [7_500_000, '2h 5m'],
    [2 * 86_400_000, '2d'],
  ];
  for (const [ms, expected] of cases) {
    test(`${ms} ms reads ${expected}`, () => {
      assert.equal(formatDuration(ms), expected);
    });
  }
});

describe('parseEvent', () => {
  test('accepts a frame with revision and type', () => {
    assert.equal(parseEvent('{"revision":3,"type":"route.created","at":"x"}')?.revision, 3);
  });

  test('rejects frames that are not events', () => {
    assert.equal(parseEvent('not json'), undefined);
    assert.equal(parseEvent('[1,2]'), undefined);
    assert.equal(parseEvent('{"revision":"3","type":"route.created"}'), undefined);
    assert.equal(parseEvent('{"revision":3}'), undefined);
  });
});
