import { pino, type Logger } from 'pino';

export type { Logger };

/**
 * Field paths replaced by `[Redacted]` in every log line. No code logs a
 * token on purpose; these catch a header, request or settings object passed
 * whole by mistake.
 */
const REDACTED_PATHS = [
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  '*.headers.authorization',
  'token',
  'session_token',
  '*.token',
  '*.session_token',
  'tokens',
  '*.tokens',
  'password',
  '*.password',
];

/**
 * Creates the service logger: JSON lines with ISO-8601 times, or readable
 * lines when stdout is a terminal.
 */
export function createLogger(level: string, name: string): Logger {
  const options = {
    name,
    level,
    timestamp: pino.stdTimeFunctions.isoTime,
    redact: REDACTED_PATHS,
  };
  if (!process.stdout.isTTY) return pino(options);
  return pino({ ...options, transport: { target: 'pino-pretty', options: { colorize: true } } });
}
