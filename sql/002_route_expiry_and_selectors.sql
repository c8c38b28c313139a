-- Idle expiry and worker selectors of routes.

-- Seconds without client activity after which the sweeper deletes the route; null never expires.
ALTER TABLE routes ADD COLUMN idle_timeout_s integer CHECK (idle_timeout_s > 0);
-- The latest client activity a worker reported for the route; null until the first report.
ALTER TABLE routes ADD COLUMN last_activity_at timestamptz;
-- Labels a worker must carry to hold the route, at placement and at every move; null for any.
ALTER TABLE routes ADD COLUMN worker_selector jsonb;

-- The expiry sweep reads only routes that can expire.
CREATE INDEX routes_idle ON routes (id) WHERE idle_timeout_s IS NOT NULL;

-- Wildcard domains are matched in lower case from now on; stored ones follow, unless the
-- lower-case spelling is shared with another worker.
UPDATE workers w SET wildcard_domain = lower(w.wildcard_domain)
WHERE w.wildcard_domain <> lower(w.wildcard_domain)
  AND NOT EXISTS (
    SELECT 1 FROM workers o
    WHERE o.id <> w.id AND lower(o.wildcard_domain) = lower(w.wildcard_domain));
