-- Functions whose signature changed: CREATE OR REPLACE cannot change a
-- signature, so the old one would stay beside the new (sql/*.sql, applied
-- after the migrations, creates the new). An upgrade step, so it lives here
-- and not in the files that say what is.

-- delivery_insert before V4 added `ordered`.
DROP FUNCTION IF EXISTS webhooks.delivery_insert(text, uuid[], bigint[], text[], integer[], timestamptz[], integer[],
                                                 text[], timestamptz[], double precision[], text[], timestamptz);
