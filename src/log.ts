import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Creates the service logger: JSON lines, or readable lines when stdout is a
 * terminal. Tokens are never passed to it; `redact` guards the header anyway.
 */
export function createLogger(level: string, name: string): Logger {
  const options = {
    name,
    level,
    redact: ['req.headers.authorization', 'authorization', 'token', 'session_token'],
  };
  if (!process.stdout.isTTY) return pino(options);
  return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
}
