-- Each worker's number of routes, kept up to date by every write transaction,
-- so placement reads it instead of counting the worker's routes per request.
ALTER TABLE workers ADD COLUMN route_count integer NOT NULL DEFAULT 0;

UPDATE workers w SET route_count = c.count
FROM (SELECT worker_id, count(*) AS count FROM routes GROUP BY worker_id) c
WHERE w.id = c.worker_id;
