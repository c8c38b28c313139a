-- Each worker's table digest, kept up to date by every write transaction, so a
-- snapshot or a resume reads it instead of hashing every route of the worker.
-- The 16-byte digest is stored as two signed 64-bit halves because PostgreSQL
-- XORs bigint (`#`) but not bytea.
ALTER TABLE workers ADD COLUMN digest_high bigint NOT NULL DEFAULT 0;
ALTER TABLE workers ADD COLUMN digest_low bigint NOT NULL DEFAULT 0;

-- A route's part is the first 16 bytes of SHA-256 of "<route id>:<route revision>".
UPDATE workers w SET digest_high = d.high, digest_low = d.low
FROM (
  SELECT worker_id,
    bit_xor(('x' || encode(substr(part, 1, 8), 'hex'))::bit(64)::bigint) AS high,
    bit_xor(('x' || encode(substr(part, 9, 8), 'hex'))::bit(64)::bigint) AS low
  FROM (
    SELECT worker_id, sha256(convert_to(id::text || ':' || revision::text, 'UTF8')) AS part
    FROM routes
  ) parts
  GROUP BY worker_id
) d
WHERE w.id = d.worker_id;
