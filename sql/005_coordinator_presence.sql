-- Coordinator processes and when each last showed it is running, so the
-- sessions a crashed coordinator held can be released.
CREATE TABLE coordinators (
  id uuid PRIMARY KEY,
  started_at timestamptz NOT NULL,
  last_seen_at timestamptz NOT NULL
);

CREATE INDEX worker_instances_coordinator ON worker_instances (coordinator_id)
  WHERE coordinator_id IS NOT NULL;
