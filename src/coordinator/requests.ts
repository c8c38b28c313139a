import type { Server } from 'node:http';

/** Counts the HTTP requests a server is handling, so that shutdown can wait for them. */
export class RequestTracker {
  #inFlight = 0;
  #waiters: Array<() => void> = [];

  constructor(server: Server) {
    server.on('request', (_request, response) => {
      this.#inFlight += 1;
      // 'close' also fires when the client goes away, so an abandoned request is not waited for.
      response.once('close', () => this.#finished());
    });
  }

  get inFlight(): number {
    return this.#inFlight;
  }

  /** Resolves true once no request is in flight, or false when `timeoutMs` passes first. */
  drain(timeoutMs: number): Promise<boolean> {
    if (this.#inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(false), timeoutMs);
      this.#waiters.push(() => {
        clearTimeout(timer);
        resolve(true);
      });
    });
  }

  #finished(): void {
    this.#inFlight -= 1;
    if (this.#inFlight > 0) return;
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter();
  }
}
