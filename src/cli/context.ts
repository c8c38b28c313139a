import type { CoordinatorClient } from './client.ts';
import type { Palette } from './format.ts';

/** Dependencies of every command: the coordinator client, the output streams and the clock. */
export interface CommandContext {
  client: CoordinatorClient;
  /** Styles for stdout; identity functions unless stdout is a terminal. */
  palette: Palette;
  /** Writes one line to stdout. */
  print: (line: string) => void;
  /** Writes one line to stderr, for notices that must not mix with the output. */
  warn: (line: string) => void;
  nowMs: () => number;
}
