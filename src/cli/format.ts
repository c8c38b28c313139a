import { styleText } from 'node:util';
import type { RouteEvent } from '../../proto/index.ts';

type Style = (text: string) => string;

/** Styles for terminal output; each is the identity when colour is off. */
export interface Palette {
  bold: Style;
  dim: Style;
  green: Style;
  yellow: Style;
  red: Style;
  cyan: Style;
}

/**
 * Decides whether to colour a stream: only a terminal, and only while `NO_COLOR` is unset
 * or empty (the convention of no-color.org).
 */
export function shouldUseColor(stream: { isTTY?: boolean }, env: NodeJS.ProcessEnv): boolean {
  const isColorDisabled = env.NO_COLOR !== undefined && env.NO_COLOR !== '';
  return stream.isTTY === true && !isColorDisabled;
}

/** Builds the styles; `isEnabled` comes from `shouldUseColor`, which already checked stdout. */
export function createPalette(isEnabled: boolean): Palette {
  // Node's styleText checks process.stdout itself unless `validateStream` is false, and the
  // caller has already decided.
  const options = { validateStream: false };
  const style = (format: Parameters<typeof styleText>[0]): Style =>
    isEnabled ? (text) => styleText(format, text, options) : (text) => text;
  return {
    bold: style('bold'),
    dim: style('dim'),
    green: style('green'),
    yellow: style('yellow'),
    red: style('red'),
    cyan: style('cyan'),
  };
}

/** A table cell: its text, and a style applied after padding so widths stay right. */
export interface Cell {
  text: string;
  style?: Style;
}

export interface Column {
  header: string;
  alignRight?: boolean;
}

/** Lays out rows under bold headers, two spaces between columns, no trailing blanks. */
export function renderTable(
  columns: Column[],
  rows: Array<Array<string | Cell>>,
  palette: Palette,
): string {
  const cells = rows.map((row) => row.map(toCell));
  const widths = columns.map((column, index) =>
    Math.max(column.header.length, ...cells.map((row) => row[index]?.text.length ?? 0)),
  );
  const header = columns.map((column) => ({ text: column.header, style: palette.bold }));
  return [header, ...cells].map((row) => renderRow(columns, widths, row)).join('\n');
}

function renderRow(columns: Column[], widths: number[], row: Cell[]): string {
  const last = columns.length - 1;
  const parts = columns.map((column, index) => {
    const cell = row[index] ?? { text: '' };
    const padded = padCell(cell.text, widths[index], column.alignRight === true, index === last);
    return cell.style ? cell.style(padded) : padded;
  });
  return parts.join('  ').trimEnd();
}

function padCell(text: string, width: number, isRightAligned: boolean, isLast: boolean): string {
  if (isRightAligned) return text.padStart(width);
  // The last column stays unpadded, so that lines carry no trailing blanks.
  return isLast ? text : text.padEnd(width);
}

function toCell(value: string | Cell): Cell {
  return typeof value === 'string' ? { text: value } : value;
}

/** Formats a duration for people: `850ms`, `12s`, `3m 4s`, `2h 5m`, `3d 4h`. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.max(0, Math.round(ms))}ms`;
  const seconds = Math.floor(ms / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return joinUnits(minutes, 'm', seconds % 60, 's');
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return joinUnits(hours, 'h', minutes % 60, 'm');
  return joinUnits(Math.floor(hours / 24), 'd', hours % 24, 'h');
}

function joinUnits(major: number, majorUnit: string, minor: number, minorUnit: string): string {
  return minor === 0 ? `${major}${majorUnit}` : `${major}${majorUnit} ${minor}${minorUnit}`;
}

/** Formats the time since `isoTime` as `12s ago`, or `never` for null. */
export function formatAge(isoTime: string | null | undefined, nowMs: number): string {
  if (!isoTime) return 'never';
  const thenMs = Date.parse(isoTime);
  if (Number.isNaN(thenMs)) return isoTime;
  return `${formatDuration(nowMs - thenMs)} ago`;
}

/** Cuts `text` to `maxLength` characters, marking the cut with an ellipsis. */
export function truncate(text: string, maxLength: number): string {
  return text.length <= maxLength ? text : `${text.slice(0, maxLength - 1)}…`;
}

/** Picks the colour of a route or worker status. */
export function statusStyle(status: string, palette: Palette): Style {
  if (status === 'active' || status === 'alive') return palette.green;
  if (status === 'pending' || status === 'draining') return palette.yellow;
  return palette.red;
}

export interface EventFormatOptions {
  palette: Palette;
  /** The name to print for a worker id, e.g. its authority; the id itself when unknown. */
  workerName: (workerId: string) => string;
}

/**
 * Formats one event as a line: time, revision, type, then what it concerns, e.g.
 * `2026-01-02T03:04:05.000Z  r42  route.moved  s1/jupyter  worker=b  http://a:1 → http://b:2`.
 */
export function formatEvent(event: RouteEvent, options: EventFormatOptions): string {
  const { palette } = options;
  const head = [
    palette.dim(event.at),
    palette.dim(`r${event.revision}`),
    eventTypeStyle(event.type, palette)(event.type.padEnd(TYPE_WIDTH)),
  ];
  return [...head, ...describeSubject(event, options)].join('  ').trimEnd();
}

// Width of the longest event type, `worker.deregistered`, so that columns line up.
const TYPE_WIDTH = 19;

function describeSubject(event: RouteEvent, options: EventFormatOptions): string[] {
  if (event.route) return describeRouteEvent(event, options);
  if (event.worker) return describeWorkerEvent(event);
  return event.reason ? [`reason=${event.reason}`] : [];
}

function describeRouteEvent(event: RouteEvent, options: EventFormatOptions): string[] {
  const route = event.route!;
  const parts = [`${route.session_id}/${route.service}`];
  if (event.type === 'route.moved' && event.previous) {
    const from = options.workerName(event.previous.worker_id);
    parts.push(`worker=${from} → ${options.workerName(route.worker_id)}`);
    parts.push(`${event.previous.url} → ${route.url}`);
  } else {
    parts.push(`worker=${options.workerName(route.worker_id)}`, route.url);
  }
  if (event.reason) parts.push(`reason=${event.reason}`);
  return parts;
}

function describeWorkerEvent(event: RouteEvent): string[] {
  const worker = event.worker!;
  const parts = [worker.authority, `id=${worker.id}`, `status=${worker.status}`];
  parts.push(`generation=${worker.generation}`);
  if (worker.instance_id) parts.push(`instance=${worker.instance_id}`);
  if (event.reason) parts.push(`reason=${event.reason}`);
  return parts;
}

function eventTypeStyle(type: string, palette: Palette): Style {
  switch (type) {
    case 'route.created':
    case 'worker.registered':
    case 'worker.connected':
    case 'worker.recovered':
      return palette.green;
    case 'route.deleted':
    case 'worker.lost':
    case 'worker.deregistered':
      return palette.red;
    case 'route.moved':
    case 'worker.disconnected':
      return palette.yellow;
    default:
      return palette.cyan;
  }
}
