-- When each instance last registered, so instances of stopped processes can be
-- distinguished from ones that registered a moment ago and are still connecting.
ALTER TABLE worker_instances ADD COLUMN registered_at timestamptz NOT NULL DEFAULT now();
