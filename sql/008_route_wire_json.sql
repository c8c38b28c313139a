-- Each route's JSON as the writer last recorded it in the change log, without
-- its derived status, so a snapshot streams stored text instead of building
-- JSON per row. Null until the route's next change; snapshots build those.
ALTER TABLE routes ADD COLUMN wire text;
