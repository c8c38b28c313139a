import { spawn, type ChildProcess } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';
import { WebSocket } from 'ws';

// Helpers shared by the benchmarks: statistics, child processes and the results page.

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLOCK_TICKS = Number(execFileSync('getconf', ['CLK_TCK']).toString().trim()) || 100;
const RESULTS_PAGE = path.join(ROOT, 'docs', 'benchmarks.md');

/** Returns the q-quantile (0..1) of ascending `sorted` samples. */
export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/** Median, min and max of repeated measurements of one figure. */
export interface Spread {
  median: number;
  min: number;
  max: number;
}

export function spread(values: number[]): Spread {
  const sorted = [...values].sort((a, b) => a - b);
  return { median: quantile(sorted, 0.5), min: sorted[0], max: sorted[sorted.length - 1] };
}

export function formatSpread(value: Spread, digits = 0): string {
  const f = (n: number) => n.toFixed(digits);
  return `${f(value.median)} (${f(value.min)}–${f(value.max)})`;
}

/** Runs `jobs` with at most `concurrency` in flight; returns each job's latency in ms. */
export async function runConcurrently(
  count: number,
  concurrency: number,
  job: (index: number) => Promise<void>,
): Promise<{ latenciesMs: number[]; elapsedMs: number }> {
  const latenciesMs: number[] = [];
  let next = 0;
  const startedAt = performance.now();
  const lanes = Array.from({ length: concurrency }, async () => {
    while (next < count) {
      const index = next++;
      const begin = performance.now();
      await job(index);
      latenciesMs.push(performance.now() - begin);
    }
  });
  await Promise.all(lanes);
  latenciesMs.sort((a, b) => a - b);
  return { latenciesMs, elapsedMs: performance.now() - startedAt };
}

/** Starts a child process whose output is kept for error messages. */
export function startChild(command: string, args: string[], env: Record<string, string> = {}) {
  const child: ChildProcess = spawn(command, args, {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout?.on('data', (chunk) => (output = (output + chunk).slice(-20_000)));
  child.stderr?.on('data', (chunk) => (output = (output + chunk).slice(-20_000)));
  return { child, output: () => output };
}

/** Waits until `probe` resolves true, failing after `timeoutMs`. */
export async function waitUntil(what: string, timeoutMs: number, probe: () => Promise<boolean>) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await probe().catch(() => false)) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
}

/** Resident memory of a process in bytes, from /proc. */
export async function residentBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const match = /VmRSS:\s+(\d+) kB/.exec(status);
  return match ? Number(match[1]) * 1024 : Number.NaN;
}

/**
 * Sends JSON requests over kept-alive connections with node:http, which
 * costs the load generator less CPU per request than fetch, so the servers
 * measured get more of the shared cores.
 */
export class JsonClient {
  readonly #agent = new http.Agent({ keepAlive: true, maxSockets: 64 });
  readonly #headers: Record<string, string>;

  constructor(headers: Record<string, string>) {
    this.#headers = { ...headers, 'content-type': 'application/json' };
  }

  /** Sends one request; resolves with the status and body text. */
  request(method: string, url: string, body?: unknown): Promise<{ status: number; text: string }> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const headers = payload === undefined ? this.#headers : { ...this.#headers, 'content-length': String(Buffer.byteLength(payload)) };
    return new Promise((resolve, reject) => {
      const request = http.request(url, { method, headers, agent: this.#agent }, (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
        response.on('error', reject);
      });
      request.on('error', reject);
      request.end(payload);
    });
  }

  close(): void {
    this.#agent.destroy();
  }
}

/** Returns the CPU time a process has used so far, user and system, in seconds, from /proc. */
export async function cpuSeconds(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
}

/** Returns the CPU time of every PostgreSQL process on this machine so far, in seconds. */
export async function postgresCpuSeconds(): Promise<number> {
  let total = 0;
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const comm = await readFile(`/proc/${entry}/comm`, 'utf8').catch(() => '');
    if (comm.trim() !== 'postgres') continue;
    total += await cpuSeconds(Number(entry)).catch(() => 0);
  }
  return total;
}

/** Memory in use by a process after a full garbage collection, in bytes. */
export interface HeapReading {
  /** JavaScript objects still reachable. */
  heapUsed: number;
  /** Memory outside the heap that objects reference: buffers and native state. */
  external: number;
}

/**
 * Reads a process's memory after a full garbage collection, through the
 * inspector it opened with `--inspect=127.0.0.1:0`. `output` returns what the
 * process has printed so far, where the inspector's address appears.
 */
export async function heapAfterGc(output: () => string): Promise<HeapReading> {
  const match = /Debugger listening on (ws:\/\/127\.0\.0\.1:\d+\/[\w-]+)/.exec(output());
  if (!match) throw new Error('the process printed no inspector address; start it with --inspect=127.0.0.1:0');
  const socket = new WebSocket(match[1]);
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  let nextId = 0;
  const call = (method: string, params: object = {}) =>
    new Promise<any>((resolve, reject) => {
      const id = ++nextId;
      const onMessage = (data: Buffer) => {
        const message = JSON.parse(String(data));
        if (message.id !== id) return;
        socket.off('message', onMessage);
        if (message.error) reject(new Error(message.error.message));
        else resolve(message.result);
      };
      socket.on('message', onMessage);
      socket.send(JSON.stringify({ id, method, params }));
    });
  try {
    // Twice: the first collection can leave objects that only the second frees.
    await call('HeapProfiler.collectGarbage');
    await call('HeapProfiler.collectGarbage');
    const result = await call('Runtime.evaluate', {
      expression: 'JSON.stringify(process.memoryUsage())',
      returnByValue: true,
    });
    const usage = JSON.parse(result.result.value);
    return { heapUsed: usage.heapUsed, external: usage.external };
  } finally {
    socket.close();
  }
}

/** Facts about this machine and checkout, for the results page. */
export function machineFacts(): string {
  const commit = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT }).toString().trim();
  let postgres = 'unknown';
  try {
    postgres = execFileSync('psql', ['-h', '127.0.0.1', '-U', 'postgres', '-Atc', 'SHOW server_version'])
      .toString()
      .trim();
  } catch {
    // The page then shows the version as unknown.
  }
  const cpu = os.cpus()[0]?.model ?? 'unknown CPU';
  const memoryGiB = (os.totalmem() / 2 ** 30).toFixed(0);
  return `${os.cpus().length} cores (${cpu}), ${memoryGiB} GiB, Node ${process.version}, ` +
    `PostgreSQL ${postgres}, commit ${commit}, ${new Date().toISOString().slice(0, 10)}`;
}

/**
 * Replaces one named section of docs/benchmarks.md, between its markers, so
 * each benchmark rewrites only its own results.
 */
export async function writeSection(name: string, markdown: string): Promise<void> {
  const start = `<!-- ${name}:start -->`;
  const end = `<!-- ${name}:end -->`;
  let page = await readFile(RESULTS_PAGE, 'utf8').catch(() => '# Benchmarks\n');
  const block = `${start}\n${markdown.trim()}\n${end}`;
  const from = page.indexOf(start);
  const to = page.indexOf(end);
  if (from >= 0 && to > from) page = page.slice(0, from) + block + page.slice(to + end.length);
  else page = `${page.trimEnd()}\n\n${block}\n`;
  await writeFile(RESULTS_PAGE, page);
}
