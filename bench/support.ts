import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { execFileSync } from 'node:child_process';

// Helpers shared by the benchmarks: statistics, child processes and the results page.

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
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
