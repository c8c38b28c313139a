import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { pino } from 'pino';
import { parseConfig } from '../../src/coordinator/config.ts';
import { startCoordinator, type Coordinator } from '../../src/coordinator/coordinator.ts';
import { createTestDatabase, type TestDatabase } from './database.ts';

export interface TestCoordinator extends Coordinator {
  db: TestDatabase;
  tokens: { manager: string; worker: string; read: string };
  /** Calls the REST API with the manager token unless `token` is given. */
  api(method: string, urlPath: string, body?: unknown, token?: string): Promise<ApiResponse>;
  stop(): Promise<void>;
}

export interface ApiResponse {
  status: number;
  headers: Headers;
  body: any;
}

/**
 * Starts a coordinator in this process on a fresh database and a free port.
 * `env` adds settings such as APPPROXY_HEARTBEAT_INTERVAL_MS.
 */
export async function startTestCoordinator(env: Record<string, string> = {}): Promise<TestCoordinator> {
  const db = await createTestDatabase();
  const config = parseConfig(['--port', '0', '--data-dir', db.dataDir, '--log-level', 'silent'], {
    ...env,
    ...(db.url ? { DATABASE_URL: db.url } : {}),
  });
  const coordinator = await startCoordinator(config, pino({ level: process.env.APPPROXY_TEST_LOG ?? 'silent' }));
  const tokens = JSON.parse(await readFile(path.join(db.dataDir, 'tokens.json'), 'utf8'));
  const api = async (method: string, urlPath: string, body?: unknown, token = tokens.manager) => {
    const response = await fetch(`${coordinator.url}${urlPath}`, {
      method,
      headers: {
        authorization: `Bearer ${token}`,
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
  };
  return {
    ...coordinator,
    db,
    tokens,
    api,
    stop: async () => {
      await coordinator.close();
      await db.drop();
    },
  };
}
