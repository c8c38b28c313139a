import { randomBytes, timingSafeEqual } from 'node:crypto';
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Sql } from '../store/database.ts';
import { hashToken } from '../services/workers.ts';

export type TokenKind = 'manager' | 'worker' | 'read';
export const TOKEN_KINDS: readonly TokenKind[] = ['manager', 'worker', 'read'];

/** The owner of a bearer token. */
export type Principal =
  | { kind: TokenKind }
  | { kind: 'session'; workerId: string; instanceId: string; generation: number };

export type TokenSettings = Partial<Record<TokenKind, string[]>>;

/**
 * Loads the tokens of each kind: those configured, else the ones generated
 * once into `<dataDir>/tokens.json` (mode 0600).
 *
 * @returns the tokens by kind, the file path when one was used, and the kinds generated.
 */
export async function loadTokens(
  configured: TokenSettings,
  dataDir: string,
): Promise<{ tokens: Record<TokenKind, string[]>; file: string | null; generated: TokenKind[] }> {
  const missing = TOKEN_KINDS.filter((kind) => !configured[kind]?.length);
  const tokens = { ...configured } as Record<TokenKind, string[]>;
  if (missing.length === 0) return { tokens, file: null, generated: [] };

  const file = path.resolve(dataDir, 'tokens.json');
  const stored = await readTokenFile(file);
  const generated = { ...stored };
  for (const kind of TOKEN_KINDS) generated[kind] ??= randomBytes(24).toString('base64url');
  if (TOKEN_KINDS.some((kind) => stored[kind] === undefined)) await writeTokenFile(file, generated);
  for (const kind of missing) tokens[kind] = [generated[kind] as string];
  return { tokens, file, generated: missing };
}

async function readTokenFile(file: string): Promise<Partial<Record<TokenKind, string>>> {
  try {
    return JSON.parse(await readFile(file, 'utf8'));
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new Error(`Cannot read tokens file ${file}: ${(error as Error).message}`);
  }
}

async function writeTokenFile(file: string, tokens: Partial<Record<TokenKind, string>>) {
  await mkdir(path.dirname(file), { recursive: true });
  await writeFile(file, `${JSON.stringify(tokens, null, 2)}\n`, { mode: 0o600 });
  await chmod(file, 0o600);
}

/**
 * Tells which principal a bearer token belongs to. API tokens are compared by
 * SHA-256 hash in constant time; the hashes of every coordinator on the
 * database count, so generated tokens work everywhere.
 */
export class Authenticator {
  readonly #sql: Sql;
  readonly #findSession: (hash: string) => Promise<Principal | null>;
  #local = new Map<TokenKind, Buffer[]>();
  #shared = new Map<TokenKind, Buffer[]>();

  constructor(sql: Sql, findSession: (hash: string) => Promise<Principal | null>) {
    this.#sql = sql;
    this.#findSession = findSession;
  }

  /**
   * Accepts `tokens` on this coordinator and stores the hashes of the
   * generated ones in the database. Configured tokens stay local, so removing
   * one from the configuration revokes it.
   */
  async publish(tokens: Record<TokenKind, string[]>, generated: TokenKind[]): Promise<void> {
    for (const kind of generated) {
      for (const token of tokens[kind]) {
        await this.#sql`
          INSERT INTO api_tokens (kind, token_hash) VALUES (${kind}, ${hashToken(token)})
          ON CONFLICT (token_hash) DO NOTHING`;
      }
    }
    for (const kind of TOKEN_KINDS) {
      this.#local.set(kind, tokens[kind].map((token) => Buffer.from(hashToken(token), 'hex')));
    }
    await this.refresh();
  }

  /** Reloads the hashes of generated tokens from the database. */
  async refresh(): Promise<void> {
    const rows = await this.#sql`SELECT kind, token_hash FROM api_tokens`;
    const hashes = new Map<TokenKind, Buffer[]>();
    for (const row of rows) {
      const kind = row.kind as TokenKind;
      hashes.set(kind, [...(hashes.get(kind) ?? []), Buffer.from(String(row.token_hash), 'hex')]);
    }
    this.#shared = hashes;
  }

  async identify(token: string): Promise<Principal | null> {
    const hash = hashToken(token);
    const digest = Buffer.from(hash, 'hex');
    for (const kind of TOKEN_KINDS) {
      const known = [...(this.#local.get(kind) ?? []), ...(this.#shared.get(kind) ?? [])];
      if (known.some((candidate) => timingSafeEqual(candidate, digest))) return { kind };
    }
    return this.#findSession(hash);
  }
}
