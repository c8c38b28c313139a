-- One row: the database's epoch and the revision counter.
-- Every write takes this row's lock first (SELECT ... FOR UPDATE), so writers
-- commit one after another and revisions become visible in commit order.
CREATE TABLE meta (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  epoch uuid NOT NULL,
  revision bigint NOT NULL DEFAULT 0,
  -- Every change at or below this revision has been removed from the change log.
  compacted_through bigint NOT NULL DEFAULT 0
);

-- SHA-256 hashes of API tokens, so every coordinator on this database accepts them.
CREATE TABLE api_tokens (
  kind text NOT NULL CHECK (kind IN ('manager', 'worker', 'read')),
  token_hash text NOT NULL,
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (token_hash)
);

CREATE TABLE workers (
  id uuid PRIMARY KEY,
  authority text NOT NULL UNIQUE,
  frontend_mode text NOT NULL CHECK (frontend_mode IN ('port', 'wildcard')),
  hostname text NOT NULL,
  protocols text[] NOT NULL,
  port_first integer,
  port_last integer,
  wildcard_domain text UNIQUE,
  advertised_port integer,
  capacity integer,
  labels jsonb NOT NULL DEFAULT '{}',
  status text NOT NULL CHECK (status IN ('alive', 'lost', 'draining', 'deregistered')),
  generation bigint NOT NULL,
  registered_at timestamptz NOT NULL,
  last_heartbeat_at timestamptz,
  -- The last revision that changed this worker's table.
  target_revision bigint NOT NULL DEFAULT 0,
  -- The lowest revision acknowledged by the connected instances.
  applied_revision bigint NOT NULL DEFAULT 0,
  last_ack_at timestamptz,
  last_nack jsonb
);

-- The processes serving one worker; each registration of an instance raises
-- its generation and replaces its session token.
CREATE TABLE worker_instances (
  worker_id uuid NOT NULL REFERENCES workers (id),
  instance_id text NOT NULL,
  generation bigint NOT NULL,
  session_token_hash text NOT NULL UNIQUE,
  -- The coordinator process holding this instance's session, or null.
  coordinator_id uuid,
  applied_revision bigint NOT NULL DEFAULT 0,
  last_heartbeat_at timestamptz,
  PRIMARY KEY (worker_id, instance_id)
);

CREATE TABLE routes (
  id uuid PRIMARY KEY,
  session_id text NOT NULL,
  service text NOT NULL,
  protocol text NOT NULL,
  mode text NOT NULL,
  backends jsonb NOT NULL,
  worker_id uuid NOT NULL REFERENCES workers (id),
  port integer,
  subdomain text,
  url text NOT NULL,
  open_to_public boolean NOT NULL,
  allowed_client_ips jsonb NOT NULL,
  labels jsonb NOT NULL,
  revision bigint NOT NULL,
  created_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  UNIQUE (session_id, service),
  UNIQUE (worker_id, port),
  UNIQUE (worker_id, subdomain)
);

CREATE INDEX routes_service ON routes (service);
CREATE INDEX routes_worker_revision ON routes (worker_id, revision);

-- One row per revision, written in the transaction of the change it records.
CREATE TABLE changes (
  revision bigint PRIMARY KEY,
  type text NOT NULL,
  at timestamptz NOT NULL,
  route_id uuid,
  session_id text,
  -- The worker the route is on after the change, or the worker of a worker event.
  worker_id uuid,
  -- The worker and route revision before the change; null for a created route.
  prev_worker_id uuid,
  prev_revision bigint,
  route jsonb,
  worker jsonb,
  previous jsonb,
  reason text
);

CREATE INDEX changes_worker ON changes (worker_id, revision);
CREATE INDEX changes_prev_worker ON changes (prev_worker_id, revision);
CREATE INDEX changes_session ON changes (session_id, revision);
CREATE INDEX changes_at ON changes (at);

INSERT INTO meta (epoch) VALUES (gen_random_uuid());
