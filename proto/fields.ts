import { isIP } from 'node:net';
import * as v from 'valibot';

// Field schemas shared by the REST bodies and the WebSocket messages.

const HOST_LABEL = '[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?';
const HOSTNAME = new RegExp(`^(?=.{1,253}$)${HOST_LABEL}(?:\\.${HOST_LABEL})*\\.?$`);

/** Returns whether `value` is an IP address or a DNS hostname. */
export function isHost(value: string): boolean {
  return isIP(value) !== 0 || HOSTNAME.test(value);
}

/** Returns whether `value` is an IPv4 or IPv6 network in CIDR notation. */
export function isCidr(value: string): boolean {
  const [address, prefix, extra] = value.split('/');
  // No leading zeros in the prefix and no zone id (`%eth0`): neither means anything here.
  if (extra !== undefined || prefix === undefined || !/^(0|[1-9]\d{0,2})$/.test(prefix)) return false;
  if (address.includes('%')) return false;
  const family = isIP(address);
  if (family === 0) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

export const UuidSchema = v.pipe(v.string(), v.uuid('must be a uuid'));

export const HostSchema = v.pipe(
  v.string(),
  v.check(isHost, 'must be an IP address or a DNS hostname'),
);

export const PortSchema = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(65535));

export const AuthoritySchema = v.pipe(
  v.string(),
  v.regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'must match [a-z0-9][a-z0-9._-]{0,63}'),
);

export const ServiceSchema = v.pipe(
  v.string(),
  v.maxLength(64),
  v.regex(/^[a-z0-9][a-z0-9._-]*$/, 'must match [a-z0-9][a-z0-9._-]*'),
);

const UNPAIRED_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;
const CONTROL_CHARACTER = /[\u0000-\u001F\u007F-\u009F]/;

/**
 * Returns whether PostgreSQL can store `text`: it has no NUL character and no
 * unpaired UTF-16 surrogate.
 */
export function isStorableText(text: string): boolean {
  return !text.includes('\u0000') && !UNPAIRED_SURROGATE.test(text);
}

/** Text shown to operators: storable, and free of control characters that would act on a terminal. */
const DisplayTextSchema = v.pipe(
  v.string(),
  v.check((text) => isStorableText(text) && !CONTROL_CHARACTER.test(text), 'must not contain control characters'),
);

export const SessionIdSchema = v.pipe(DisplayTextSchema, v.minLength(1), v.maxLength(128));

/** Free-form string labels: at most 64, keys up to 63 and values up to 1,024 characters. */
export const LabelsSchema = v.pipe(
  v.record(
    v.pipe(v.string(), v.regex(/^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$/, 'invalid label key')),
    v.pipe(DisplayTextSchema, v.maxLength(1024)),
  ),
  v.check((labels) => Object.keys(labels).length <= 64, 'at most 64 labels'),
);

export const CidrListSchema = v.pipe(
  v.array(v.pipe(v.string(), v.check(isCidr, 'must be a CIDR such as 10.0.0.0/8'))),
  v.maxLength(256),
);

export const RouteProtocolSchema = v.picklist(['http', 'tcp', 'grpc', 'h2', 'preopen']);
export const RouteModeSchema = v.picklist(['interactive', 'inference']);
export const FrontendModeSchema = v.picklist(['port', 'wildcard']);
export const WorkerProtocolSchema = v.picklist(['http', 'tcp']);

export const BackendSchema = v.strictObject({
  host: HostSchema,
  port: PortSchema,
  weight: v.optional(v.pipe(v.number(), v.gtValue(0), v.maxValue(1_000_000)), 1),
});

export const BackendListSchema = v.pipe(v.array(BackendSchema), v.minLength(1), v.maxLength(64));

/**
 * A DNS label a route is served under in wildcard mode. Requests may give any
 * case; the coordinator stores it in lower case.
 */
export const SubdomainSchema = v.pipe(
  v.string(),
  v.regex(/^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/, 'must be one DNS label'),
);

/** A wildcard domain such as `.apps.example.test`, stored and matched in lower case. */
export const WildcardDomainSchema = v.pipe(
  v.string(),
  v.toLowerCase(),
  v.maxLength(253),
  v.regex(/^\.[a-z0-9]/, 'must start with a dot, such as .apps.example.test'),
  v.check((value) => isHost(value.slice(1)), 'must be a DNS domain'),
);
