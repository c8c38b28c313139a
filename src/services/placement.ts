import { randomBytes } from 'node:crypto';
import { domainToASCII } from 'node:url';
import type { RouteProtocol } from '../../proto/index.ts';
import type { Candidate, WorkerRecord } from '../store/workers.ts';

// Pure placement rules: which workers may take a route, and the address it gets.

const MAX_LABEL_LENGTH = 63;

/** Returns whether a worker serves a route protocol: tcp on tcp workers, the rest on http. */
export function servesProtocol(worker: WorkerRecord, protocol: RouteProtocol): boolean {
  if (protocol === 'tcp') return worker.frontend_mode === 'port' && worker.protocols.includes('tcp');
  return worker.protocols.includes('http');
}

/** Returns whether a worker has room for one more route under its capacity. */
export function hasCapacity(worker: Candidate): boolean {
  return worker.capacity === null || worker.routeCount < worker.capacity;
}

/**
 * Normalises text to one DNS label: lower case, non-ASCII spelled in
 * punycode, other characters as `-`, at most 63 characters.
 */
export function toDnsLabel(text: string): string {
  const ascii = text
    .toLowerCase()
    .split(/([^\x00-\x7f]+)/)
    .map((part) => (/^[\x00-\x7f]*$/.test(part) ? part : domainToASCII(part) || '-'))
    .join('');
  const label = ascii
    .replace(/[^a-z0-9-]/g, '-')
    .replace(/-{2,}/g, '-')
    .replace(/^-+|-+$/g, '');
  return trimLabel(label || 'route');
}

function trimLabel(label: string): string {
  return label.slice(0, MAX_LABEL_LENGTH).replace(/-+$/, '');
}

/** Returns the generated subdomain of a route: `<service>-<session_id>` as one label. */
export function generatedSubdomain(service: string, sessionId: string): string {
  return toDnsLabel(`${service}-${sessionId}`);
}

/** Returns `label` with a short random suffix, still one label, for a taken name. */
export function withRandomSuffix(label: string): string {
  const suffix = randomBytes(3).toString('hex');
  return `${trimLabel(label.slice(0, MAX_LABEL_LENGTH - suffix.length - 1))}-${suffix}`;
}

/** Builds the URL users open for a route placed on a worker. */
export function routeUrl(
  worker: WorkerRecord,
  protocol: RouteProtocol,
  place: { port: number | null; subdomain: string | null },
): string {
  if (worker.frontend_mode === 'wildcard') {
    const portSuffix = worker.advertised_port ? `:${worker.advertised_port}` : '';
    return `http://${place.subdomain}${worker.wildcard_domain}${portSuffix}`;
  }
  const scheme = protocol === 'tcp' ? 'tcp' : 'http';
  const host = worker.hostname.includes(':') ? `[${worker.hostname}]` : worker.hostname;
  return `${scheme}://${host}:${place.port}`;
}
