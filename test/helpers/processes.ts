import { spawn, type ChildProcess } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Returns a loopback port that nothing listens on right now. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

export interface CoordinatorProcess {
  url: string;
  child: ChildProcess;
  /** Everything the process wrote to stdout and stderr so far. */
  output: () => string;
  tokens: () => Promise<{ manager: string; worker: string; read: string }>;
  /** Sends SIGTERM and resolves with the exit code. */
  stop: () => Promise<number | null>;
}

/** Starts bin/appproxy-coordinator on a free port and waits until /health returns 200. */
export async function startCoordinatorProcess(options: {
  databaseUrl?: string;
  dataDir: string;
  env?: Record<string, string>;
  timeoutMs?: number;
  /** Node options such as `--cpu-prof`, which NODE_OPTIONS does not accept. */
  nodeArgs?: string[];
}): Promise<CoordinatorProcess> {
  const port = await freePort();
  const args = ['--port', String(port), '--data-dir', options.dataDir];
  const loader = pathToFileURL(path.join(ROOT, 'node_modules', 'tsx', 'dist', 'loader.mjs')).href;
  const main = path.join(ROOT, 'src', 'coordinator', 'main.ts');
  const child = spawn(
    options.nodeArgs ? process.execPath : path.join(ROOT, 'bin', 'appproxy-coordinator'),
    options.nodeArgs ? [...options.nodeArgs, '--import', loader, main, ...args] : args,
    {
      env: {
        ...process.env,
        ...(options.databaseUrl ? { DATABASE_URL: options.databaseUrl } : {}),
        ...options.env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let output = '';
  child.stdout?.on('data', (chunk) => (output += chunk));
  child.stderr?.on('data', (chunk) => (output += chunk));
  const url = `http://127.0.0.1:${port}`;
  await waitForHealth(url, child, options.timeoutMs ?? 30_000, () => output);
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    url,
    child,
    output: () => output,
    tokens: async () => JSON.parse(await readFile(path.join(options.dataDir, 'tokens.json'), 'utf8')),
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
  };
}

async function waitForHealth(url: string, child: ChildProcess, timeoutMs: number, output: () => string) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`coordinator exited early:\n${output()}`);
    const status = await fetch(`${url}/health`).then((r) => r.status, () => 0);
    if (status === 200) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`coordinator did not become healthy within ${timeoutMs} ms:\n${output()}`);
}
