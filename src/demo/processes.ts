import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';

export interface ExitStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** A child process whose recent output is kept, to show when something fails. */
export interface ManagedChild {
  name: string;
  process: ChildProcess;
  /** Settles when the process exits. */
  exited: Promise<ExitStatus>;
  /** The exit status, once the process has exited. */
  exitStatus: () => ExitStatus | undefined;
  /** The last lines the process wrote, stdout and stderr interleaved. */
  recentOutput: () => string[];
}

export interface StartChildOptions {
  name: string;
  command: string;
  args: string[];
  env: NodeJS.ProcessEnv;
  /** Copy each output line to stderr as it arrives, prefixed with the name. */
  isEchoed: boolean;
}

// Enough to show the cause of a failed start without flooding the terminal.
const KEPT_OUTPUT_LINES = 40;

/** Starts a process with piped output and keeps its last lines. */
export function startChild(options: StartChildOptions): ManagedChild {
  const child = spawn(options.command, options.args, {
    env: options.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const keep = (line: string) => {
    lines.push(line);
    if (lines.length > KEPT_OUTPUT_LINES) lines.shift();
    if (options.isEchoed) process.stderr.write(`[${options.name}] ${line}\n`);
  };
  createInterface({ input: child.stdout! }).on('line', keep);
  createInterface({ input: child.stderr! }).on('line', keep);

  let status: ExitStatus | undefined;
  const exited = new Promise<ExitStatus>((resolve) => {
    child.once('exit', (code, signal) => resolve((status = { code, signal })));
    child.once('error', (error) => {
      keep(`failed to start ${options.command}: ${error.message}`);
      resolve((status = { code: null, signal: null }));
    });
  });
  return {
    name: options.name,
    process: child,
    exited,
    exitStatus: () => status,
    recentOutput: () => [...lines],
  };
}

/** Sends SIGTERM, then SIGKILL when the process is still running after `timeoutMs`. */
export async function stopChild(child: ManagedChild, timeoutMs: number): Promise<ExitStatus> {
  const status = child.exitStatus();
  if (status) return status;
  child.process.kill('SIGTERM');
  const timer = setTimeout(() => child.process.kill('SIGKILL'), timeoutMs);
  try {
    return await child.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Describes an exit status as `code 1` or `signal SIGKILL`. */
export function describeExit(status: ExitStatus): string {
  return status.signal ? `signal ${status.signal}` : `code ${status.code}`;
}
