import { setTimeout as sleep } from 'node:timers/promises';
import { describeExit, type ManagedChild } from './processes.ts';

export interface PollOptions {
  timeoutMs: number;
  intervalMs?: number;
  /** Processes whose exit means the condition can no longer come true. */
  watched?: ManagedChild[];
}

/**
 * Calls `probe` until it returns a value other than undefined and returns that value. Fails
 * after `timeoutMs`, naming `description` and the last error the probe raised.
 */
export async function pollUntil<T>(
  description: string,
  probe: () => Promise<T | undefined>,
  options: PollOptions,
): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  let lastError: unknown;
  for (;;) {
    throwIfExited(description, options.watched ?? []);
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() >= deadline) throw timeoutError(description, options.timeoutMs, lastError);
    await sleep(options.intervalMs ?? 200);
  }
}

/** Resolves like `promise`, or rejects when it takes longer than `timeoutMs`. */
export async function withTimeout<T>(
  description: string,
  timeoutMs: number,
  promise: Promise<T>,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(timeoutError(description, timeoutMs, undefined)), timeoutMs);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function throwIfExited(description: string, watched: ManagedChild[]): void {
  for (const child of watched) {
    const status = child.exitStatus();
    if (status) {
      throw new Error(`The ${child.name} exited (${describeExit(status)}) while ${description}`);
    }
  }
}

function timeoutError(description: string, timeoutMs: number, lastError: unknown): Error {
  const seconds = timeoutMs / 1000;
  const last = lastError instanceof Error ? `; last error: ${lastError.message}` : '';
  return new Error(`Timed out after ${seconds}s ${description}${last}`, { cause: lastError });
}
