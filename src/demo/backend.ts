import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';

export interface SampleBackendOptions {
  host: string;
  /** Port to listen on; 0 picks a free one. */
  port: number;
  /** Name the backend puts in its responses, so a reader sees which server responded. */
  name?: string;
}

export interface SampleBackend {
  port: number;
  close: () => Promise<void>;
}

/**
 * Starts a stand-in for a session's service: GET returns a line naming the backend and the
 * path, and every WebSocket message comes back unchanged.
 */
export async function startSampleBackend(options: SampleBackendOptions): Promise<SampleBackend> {
  const name = options.name ?? 'sample backend';
  const server = createServer((request, response) => answerHttp(name, request, response));
  const webSockets = new WebSocketServer({ server });
  webSockets.on('connection', (socket) => {
    socket.on('message', (data, isBinary) => socket.send(data, { binary: isBinary }));
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return { port, close: () => closeBackend(server, webSockets) };
}

function answerHttp(name: string, request: IncomingMessage, response: ServerResponse): void {
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' });
    response.end(`${request.method} is not allowed here; use GET\n`);
    return;
  }
  response.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
  response.end(`Hello from the ${name}: you requested ${request.url ?? '/'}\n`);
}

async function closeBackend(
  server: ReturnType<typeof createServer>,
  webSockets: WebSocketServer,
): Promise<void> {
  for (const socket of webSockets.clients) socket.terminate();
  await new Promise<void>((resolve) => webSockets.close(() => resolve()));
  // Keep-alive connections would otherwise hold server.close() open.
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
}
