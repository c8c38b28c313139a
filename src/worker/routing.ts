import { BlockList, isIP } from 'node:net';
import { isCidr } from '../../proto/index.ts';
import type { WireRoute } from './table.ts';

export type WireBackend = WireRoute['backends'][number];

/**
 * Chooses one backend at random, each with a chance proportional to its weight.
 * Returns undefined when the route has no backend.
 */
export function pickBackend(
  backends: readonly WireBackend[],
  random: () => number = Math.random,
): WireBackend | undefined {
  const total = backends.reduce((sum, backend) => sum + backend.weight, 0);
  let point = random() * total;
  for (const backend of backends) {
    point -= backend.weight;
    if (point < 0) return backend;
  }
  return backends.at(-1);
}

/**
 * Returns the subdomain a wildcard request is for: the one DNS label in front of
 * `wildcardDomain` (such as `.apps.example.test`) in the `Host` header, in lower case.
 * Returns undefined for other hosts, IP literals and names with more than one label in
 * front of the domain.
 */
export function subdomainOf(host: string | undefined, wildcardDomain: string): string | undefined {
  if (host === undefined || host.startsWith('[')) return undefined;

  const name = host.replace(/:\d*$/, '').replace(/\.$/, '').toLowerCase();
  if (!name.endsWith(wildcardDomain)) return undefined;
  const label = name.slice(0, -wildcardDomain.length);
  if (label === '' || label.includes('.')) return undefined;
  return label;
}

/** Allow lists built once per route object, since a changed route arrives as a new object. */
const allowLists = new WeakMap<WireRoute, BlockList>();

/**
 * Returns whether a client address may use the route: any address when
 * `allowed_client_ips` is empty, else only addresses inside one of its networks.
 * IPv4-mapped IPv6 addresses such as `::ffff:10.0.0.1` match IPv4 networks.
 */
export function isClientAllowed(route: WireRoute, address: string | undefined): boolean {
  if (route.allowed_client_ips.length === 0) return true;
  const family = address === undefined ? 0 : isIP(address);
  if (family === 0) return false;

  return allowListOf(route).check(address as string, family === 6 ? 'ipv6' : 'ipv4');
}

function allowListOf(route: WireRoute): BlockList {
  const cached = allowLists.get(route);
  if (cached !== undefined) return cached;

  const list = new BlockList();
  // An entry that is not a valid CIDR grants nothing, so a bad entry never opens a route.
  for (const cidr of route.allowed_client_ips.filter(isCidr)) {
    const [network, prefix] = cidr.split('/');
    list.addSubnet(network, Number(prefix), isIP(network) === 6 ? 'ipv6' : 'ipv4');
  }
  allowLists.set(route, list);
  return list;
}

/**
 * Returns whether the route is served as HTTP (with WebSocket upgrades) instead of TCP.
 * NOTE: `grpc` and `h2` routes are proxied as HTTP/1.1 only, so clients that open cleartext
 * HTTP/2 with prior knowledge, as gRPC clients do, are not served.
 */
export function isHttpRoute(route: WireRoute): boolean {
  return route.protocol !== 'tcp';
}
