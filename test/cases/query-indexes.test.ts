import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import postgres from 'postgres';
import * as v from 'valibot';
import { CreateRouteBodySchema } from '../../proto/index.ts';
import { RouteService } from '../../src/services/routes.ts';
import type { Sql } from '../../src/store/database.ts';
import { Writer } from '../../src/store/writer.ts';
import type { TestCoordinator } from '../helpers/coordinator.ts';
import { postgresSkipReason } from '../helpers/database.ts';
import type { ScriptedWorker } from '../helpers/scripted-worker.ts';
import {
  connectedWorker,
  routeBody,
  startCaseCoordinator,
} from './support.ts';

const skip = await postgresSkipReason();

/** Tables that grow with the number of routes, so a full scan of them grows too. */
const LARGE_TABLES = ['routes', 'changes'];

interface Statement {
  text: string;
  values: unknown[];
}

/** Builds a create body with the defaults the REST layer applies. */
function createBody(sessionId: string, service: string, extra: Record<string, unknown>) {
  return v.parse(CreateRouteBodySchema, routeBody(sessionId, service, '192.0.2.131:8080', extra));
}

function mentionsLargeTable(text: string): boolean {
  const reads = (table: string) => new RegExp(`\\b(FROM|JOIN|UPDATE)\\s+${table}\\b`, 'i');
  return LARGE_TABLES.some((table) => reads(table).test(text));
}

/**
 * Returns the large tables a plan reads whole: by a sequential scan, or by
 * walking a whole index without an index condition.
 */
function fullScans(plan: any): string[] {
  const isScan = String(plan['Node Type']).endsWith('Scan');
  const relation = isScan ? String(plan['Relation Name'] ?? '') : '';
  const hasCondition = plan['Index Cond'] !== undefined || plan['Recheck Cond'] !== undefined;
  const isFull = LARGE_TABLES.includes(relation) && !hasCondition;
  const own = isFull ? [`${plan['Node Type']} on ${relation}`] : [];
  return [...own, ...(plan.Plans ?? []).flatMap(fullScans)];
}

// Service discovery and route writes find their rows through indexes, so
// their cost does not grow with the size of the route table. Each statement
// the route service sends is captured and planned with sequential scans
// disabled: a plan that still scans a large table has no index to use.
describe('route queries use indexes', { skip }, () => {
  let coordinator: TestCoordinator;
  let portWorker: ScriptedWorker;
  let wildcardWorker: ScriptedWorker;
  let sql: Sql;
  let writer: Writer;
  let routes: RouteService;
  let captured: Statement[] = [];

  before(async () => {
    coordinator = await startCaseCoordinator();
    portWorker = await connectedWorker(coordinator, { authority: 'proxy-a' });
    wildcardWorker = await connectedWorker(coordinator, { authority: 'proxy-w', mode: 'wildcard' });
    sql = postgres(coordinator.db.url as string, {
      max: 2,
      onnotice: () => {},
      types: { bigint: { to: 20, from: [20], serialize: String, parse: Number } },
      debug: (_connection, text, values) => captured.push({ text, values }),
    }) as unknown as Sql;
    writer = new Writer(sql, { maxBatch: 10, timeoutMs: 5000, onCommit: () => {} });
    routes = new RouteService(sql, writer);
    for (let i = 0; i < 20; i++) {
      const body = routeBody(`fill-${i}`, 'jupyter', '192.0.2.130:8080');
      const created = await coordinator.api('POST', '/routes', body);
      assert.equal(created.status, 201);
    }
  });
  after(async () => {
    portWorker?.kill();
    wildcardWorker?.kill();
    await sql?.end();
    await coordinator?.stop();
  });

  /** Runs `operation` and returns the statements on large tables it sent. */
  async function capture(operation: () => Promise<unknown>): Promise<Statement[]> {
    captured = [];
    await operation();
    return captured.filter((statement) => mentionsLargeTable(statement.text));
  }

  async function assertIndexed(statements: Statement[]): Promise<void> {
    assert.ok(statements.length > 0, 'the operation queried the route tables');
    for (const statement of statements) {
      if (/^\s*INSERT\b/i.test(statement.text)) continue;
      const plan = await sql.begin(async (tx) => {
        await tx`SET LOCAL enable_seqscan = off`;
        const explain = `EXPLAIN (FORMAT JSON) ${statement.text}`;
        const [row] = await tx.unsafe(explain, statement.values as never[]);
        return row['QUERY PLAN'][0].Plan;
      });
      const query = statement.text.replace(/\s+/g, ' ').trim();
      assert.deepEqual(fullScans(plan), [], `full scan in: ${query}`);
    }
  }

  test('route creates use indexes', async () => {
    await assertIndexed(
      await capture(async () => {
        await routes.create(createBody('s1', 'jupyter', { worker_id: portWorker.id }));
        await routes.create(createBody('s1', 'lab', { worker_id: wildcardWorker.id }));
        await routes.create(createBody('s1', 'jupyter', {}));
      }),
    );
  });

  test('session discovery uses indexes', async () => {
    await assertIndexed(await capture(() => routes.sessionRoutes('s1')));
    await assertIndexed(await capture(() => routes.list({ session_id: 's1' }, 100)));
  });

  test('session cleanup uses indexes', async () => {
    await assertIndexed(await capture(() => routes.removeSession('s1')));
  });
});
