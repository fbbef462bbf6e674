-- Capture: how app writes become rows in webhooks.events.
--
-- Applied by `pgwebhooks migrate` after the migrations, every time (every
-- statement here is idempotent).
--
-- Who runs what (the README's "Roles and grants" says the same for users):
-- * webhooks.capture() is the one trigger function every watched table
--   calls. It is SECURITY DEFINER, owned by webhooks_capture: a NOLOGIN role
--   that can insert into webhooks.events, read the idle flag and nothing
--   else. Whatever the table's owner can make capture run (a cast to json on
--   a type it owns, a payload function) runs with those rights only, never
--   with the migrate role's.
-- * Nothing is generated per table: a table's options travel as the
--   trigger's arguments (string literals in pg_trigger), so no table, column
--   or option name is ever spliced into code.
-- * watch() runs with the caller's rights and only the table's owner (or a
--   member of that role) may call it; webhooks_app holds the grants it needs.

-- The roles. Creating them needs CREATEROLE (or a superuser) once; after
-- that, migrate needs only to be a member of webhooks_capture.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'webhooks_capture') THEN
        CREATE ROLE webhooks_capture NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'webhooks_app') THEN
        CREATE ROLE webhooks_app NOLOGIN;
    END IF;
    IF NOT pg_has_role(current_user, 'webhooks_capture', 'MEMBER') THEN
        EXECUTE format('GRANT webhooks_capture TO %I', current_user);
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE EXCEPTION 'pgwebhooks: role % cannot create or grant the roles webhooks_capture and webhooks_app', current_user
        USING ERRCODE = 'insufficient_privilege',
              HINT = format('Run once as a superuser: CREATE ROLE webhooks_capture NOLOGIN; CREATE ROLE webhooks_app NOLOGIN; GRANT webhooks_capture TO %I;', current_user);
END
$$;
GRANT USAGE ON SCHEMA webhooks TO webhooks_capture, webhooks_app;
GRANT INSERT ON webhooks.events TO webhooks_capture;
GRANT SELECT ON webhooks.listeners TO webhooks_capture;
GRANT SELECT ON SEQUENCE webhooks.listeners_idle TO webhooks_capture;

-- Is some listener idle? The count webhooks.listeners_idle keeps (V14;
-- NULL until first set: nobody). An SQL function of one expression, so it
-- is inlined where it is called: no query, no function call of its own.
-- Every name is qualified: writers call it with their own search_path.
CREATE OR REPLACE FUNCTION webhooks.someone_idle() RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT pg_catalog.pg_sequence_last_value('webhooks.listeners_idle'::pg_catalog.regclass) OPERATOR(pg_catalog.>) 0
$$;

-- Wake an idle sidecar. Listeners set webhooks.listeners.idle just before
-- they wait on LISTEN; while every listener is busy, writers skip the NOTIFY
-- (a NOTIFY takes a cluster-wide lock at commit and serialises committers).
-- The payload is constant so Postgres folds repeats within a transaction.
CREATE OR REPLACE FUNCTION webhooks.wake() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF webhooks.someone_idle() THEN
        PERFORM pg_notify('webhooks', '');
    END IF;
END
$$;

-- An origin claimed by the setting webhooks.origin, if this transaction
-- really is applying that callback: webhooks.inbound_apply() records the
-- callback (row webhooks.inbound_id) in this same transaction before it sets
-- the origin. Any session can SET webhooks.origin; only the sidecar's
-- inbound path can also have written that row, so a forged origin is
-- ignored (NULL: the write counts as the app's own).
CREATE OR REPLACE FUNCTION webhooks.origin_verified(claimed text) RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rec text := current_setting('webhooks.inbound_id', true);
BEGIN
    IF claimed IS NULL OR claimed = '' OR rec IS NULL OR rec !~ '^[0-9]{1,18}$' THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT 'inbound/' || i.route FROM webhooks.inbound i
             WHERE i.id = rec::bigint AND 'inbound/' || i.route = claimed
               AND i.xmin::text::bigint = pg_current_xact_id()::text::numeric % 4294967296);
END
$$;

-- The origin of writes in this transaction: NULL for the app's own writes,
-- 'inbound/<route>' for writes made while applying a callback.
CREATE OR REPLACE FUNCTION webhooks.current_origin() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    claimed text := current_setting('webhooks.origin', true);
BEGIN
    IF claimed IS NULL OR claimed = '' THEN
        RETURN NULL;
    END IF;
    RETURN webhooks.origin_verified(claimed);
END
$$;

-- Emit one event from the app's own code (a trigger, a procedure, a
-- statement). watch() is the fast path for whole tables; emit() is for
-- events that need joins or custom shapes. Granted to webhooks_app only.
-- Events written in one statement, set-based: `events` is a JSON array of
-- {"type", "data", "tenant_id", "source_table", "row_key", "previous"}
-- ("type" and "data" required; "data" may be JSON null). Validated as
-- emit() validates; the sidecar is woken once. emit() is one of these; an
-- app's own statement-level trigger builds the array with jsonb_agg over
-- its transition table. Returns the ids, in the array's order.
CREATE OR REPLACE FUNCTION webhooks.emit_many(events jsonb) RETURNS SETOF uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    bad jsonb;
BEGIN
    IF events IS NULL OR jsonb_typeof(events) <> 'array' THEN
        RAISE EXCEPTION 'webhooks.emit_many: events must be a JSON array, got %', coalesce(jsonb_typeof(events), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT e INTO bad FROM jsonb_array_elements(events) e
     WHERE jsonb_typeof(e) <> 'object' OR NOT e ? 'data'
        OR jsonb_typeof(e -> 'type') IS DISTINCT FROM 'string'
        OR (e ->> 'type') !~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$'
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'webhooks.emit_many: invalid event %', left(bad::text, 200)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Each event is an object with "type" (letters, digits and _ . : -) and "data".';
    END IF;
    RETURN QUERY
        INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, previous)
        SELECT x.e ->> 'type', x.e ->> 'tenant_id', webhooks.current_origin(), x.e ->> 'source_table',
               x.e ->> 'row_key', x.e -> 'data', nullif(x.e -> 'previous', 'null'::jsonb)
          FROM jsonb_array_elements(events) WITH ORDINALITY AS x(e, i)
         ORDER BY x.i
        RETURNING event_id;
    IF FOUND THEN
        PERFORM webhooks.wake();
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION webhooks.emit(
    event_type   text,
    payload      jsonb,
    tenant_id    text  DEFAULT NULL,
    source_table text  DEFAULT NULL,
    row_key      text  DEFAULT NULL,
    previous     jsonb DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    id uuid;
BEGIN
    IF event_type IS NULL OR event_type !~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$' THEN
        RAISE EXCEPTION 'webhooks.emit: invalid event type %', coalesce(quote_literal(event_type), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Event types are letters, digits and _ . : - (e.g. appointment.created).';
    END IF;
    IF payload IS NULL THEN
        RAISE EXCEPTION 'webhooks.emit: payload must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT m.id INTO id
      FROM webhooks.emit_many(pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
               'type', event_type, 'data', payload, 'tenant_id', tenant_id, 'source_table', source_table,
               'row_key', row_key, 'previous', previous))) AS m(id);
    RETURN id;
END
$$;

-- Validate watch() options against the table; returns them normalised.
CREATE OR REPLACE FUNCTION webhooks.watch_options(target regclass, entity text, options jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cols    text[];
    k       text;
    c       text;
    opts    jsonb := coalesce(options, '{}'::jsonb);
BEGIN
    IF entity IS NULL OR entity !~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$' THEN
        RAISE EXCEPTION 'webhooks.watch: invalid entity %', coalesce(quote_literal(entity), 'NULL')
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Use letters, digits and _ . : - (e.g. appointment).';
    END IF;
    IF jsonb_typeof(opts) <> 'object' THEN
        RAISE EXCEPTION 'webhooks.watch: options must be a JSON object, got %', jsonb_typeof(opts)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT array_agg(attname::text) INTO cols
      FROM pg_attribute WHERE attrelid = target AND attnum > 0 AND NOT attisdropped;

    FOR k IN SELECT jsonb_object_keys(opts) LOOP
        IF k NOT IN ('ops', 'status_column', 'columns', 'exclude', 'tenant_column', 'names', 'payload', 'per_row') THEN
            RAISE EXCEPTION 'webhooks.watch: unknown option "%"', k USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Options are ops, status_column, columns, exclude, tenant_column, names, payload, per_row.';
        END IF;
    END LOOP;
    IF opts ? 'per_row' AND jsonb_typeof(opts->'per_row') <> 'boolean' THEN
        RAISE EXCEPTION 'webhooks.watch: "per_row" must be true or false' USING ERRCODE = 'invalid_parameter_value';
    END IF;

    IF opts ? 'ops' THEN
        IF jsonb_typeof(opts->'ops') <> 'array' OR jsonb_array_length(opts->'ops') = 0
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(opts->'ops') o
                      WHERE jsonb_typeof(o) <> 'string' OR o #>> '{}' NOT IN ('insert', 'update', 'delete', 'truncate')) THEN
            RAISE EXCEPTION 'webhooks.watch: "ops" must be a non-empty array of "insert", "update", "delete", "truncate"'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;

    FOREACH k IN ARRAY ARRAY['status_column', 'tenant_column'] LOOP
        IF opts ? k THEN
            IF jsonb_typeof(opts->k) <> 'string' THEN
                RAISE EXCEPTION 'webhooks.watch: "%" must be a column name (a string)', k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            IF NOT (opts->>k = ANY (cols)) THEN
                RAISE EXCEPTION 'webhooks.watch: "%" names column "%", which % does not have', k, opts->>k, target
                    USING ERRCODE = 'undefined_column';
            END IF;
        END IF;
    END LOOP;

    FOREACH k IN ARRAY ARRAY['columns', 'exclude'] LOOP
        IF opts ? k THEN
            IF jsonb_typeof(opts->k) <> 'array'
               OR EXISTS (SELECT 1 FROM jsonb_array_elements(opts->k) o WHERE jsonb_typeof(o) <> 'string') THEN
                RAISE EXCEPTION 'webhooks.watch: "%" must be an array of column names', k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
            FOR c IN SELECT jsonb_array_elements_text(opts->k) LOOP
                IF NOT (c = ANY (cols)) THEN
                    RAISE EXCEPTION 'webhooks.watch: "%" names column "%", which % does not have', k, c, target
                        USING ERRCODE = 'undefined_column';
                END IF;
            END LOOP;
        END IF;
    END LOOP;

    IF opts ? 'names' THEN
        IF jsonb_typeof(opts->'names') <> 'object' THEN
            RAISE EXCEPTION 'webhooks.watch: "names" must be an object like {"insert": "order_submitted"}'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        FOR k IN SELECT jsonb_object_keys(opts->'names') LOOP
            IF k NOT IN ('insert', 'update', 'delete', 'status', 'truncate') THEN
                RAISE EXCEPTION 'webhooks.watch: unknown key "%" in "names"', k USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'Keys are insert, update, delete, status, truncate.';
            END IF;
            IF jsonb_typeof(opts->'names'->k) <> 'string'
               OR opts->'names'->>k !~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$' THEN
                RAISE EXCEPTION 'webhooks.watch: names.% must be an event type like "task_updated"', k
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        END LOOP;
        IF opts->'names' ? 'status' AND NOT opts ? 'status_column' THEN
            RAISE EXCEPTION 'webhooks.watch: names.status needs a status_column'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
    END IF;
    RETURN opts;
END
$$;

-- The row key of a row (as JSON) with a multi-column primary key: the key
-- columns' values as a JSON array, e.g. [1, "x"]. (A single-column key is
-- just j ->> column, written inline by capture.)
CREATE OR REPLACE FUNCTION webhooks.row_key(j jsonb, keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
    SELECT (SELECT jsonb_agg(j -> u.c ORDER BY u.o) FROM unnest(keys) WITH ORDINALITY u(c, o))::text
$$;

-- The capture trigger of every watched table, FOR EACH STATEMENT over
-- transition tables: a 10,000-row INSERT is one INSERT ... SELECT (or FOR
-- EACH ROW for the inserts and deletes of a table watched with "per_row").
-- A plain table's inserts and deletes take webhooks.plain_capture() instead
-- (below), which does the same without SET clauses. Its arguments are the
-- table's options, written by watch() (webhooks.watched reads them back):
--   0 entity          1 options (json, as given)  2 attribute numbers (json)
--   3 created type    4 updated type              5 deleted type
--   6 status type ('' = <entity>.<new value>)     7 tenant column ('' none)
--   8 excluded columns (text[])                   9 key columns (text[])
--  10 status column ('' none)  11 update filter columns (text[], '' = any)
--  12 truncated type   13 payload function's oid ('' = the row as JSON)
--  14 the table's name (schema-qualified, quoted)
--  15 's' when the table takes the fast path: one key column (16), nothing
--     excluded, no tenant column, no payload function — one statement with
--     no work before it, as cheap as per-table generated code was
-- (Triggers written by older versions lack the last ones and take the
-- general path.)
-- With a payload function, data is f(row) instead of the row as JSON, by
-- dynamic SQL (the function is named by its oid, so its regproc text is a
-- quoted, qualified name and a rename is followed); the key, tenant, status
-- and previous values still come from the row's columns.
-- PL/pgSQL compiles a trigger function once per trigger, so every table
-- gets its own cached plans. An UPDATE pairs old and new rows by key; a row
-- whose key changed has no partner and is emitted as deleted (old key) and
-- created (new key), so no change is ever skipped.
-- Every `(SELECT to_jsonb(r) AS j FROM new_rows r OFFSET 0) s`, here and in
-- plain_capture(), keeps its OFFSET 0: without it the planner pulls the
-- subquery up and writes to_jsonb(r) in again wherever s.j is used, so a
-- row's JSON was built twice per insert (key and payload) and, for an
-- UPDATE, once more for every column of the old row (the changed-columns
-- filter): a 1,000-row UPDATE of a 20-column table cost 4 times what it
-- does now.
CREATE OR REPLACE FUNCTION webhooks.capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $$
DECLARE
    org   text := nullif(current_setting('webhooks.origin', true), '');
    tcol  text;
    excl  text[];
    keys  text[];
    k1    text;
    multi boolean;
    src   text;
    scol  text;
    cols  text[];
    fn    text;
    n     bigint;
    j     jsonb;
BEGIN
    IF org IS NOT NULL THEN
        org := webhooks.origin_verified(org);
    END IF;
    -- Per row (watch()'s "per_row"): inserts and deletes of a fast-path
    -- table that plain_capture() does not take (a column's type is not
    -- built in).
    IF TG_LEVEL = 'ROW' THEN
        IF TG_OP = 'INSERT' THEN
            j := to_jsonb(NEW);
            INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
            VALUES (TG_ARGV[3], org, TG_ARGV[14], j ->> TG_ARGV[16], j);
        ELSE
            j := to_jsonb(OLD);
            INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
            VALUES (TG_ARGV[5], org, TG_ARGV[14], j ->> TG_ARGV[16], j);
        END IF;
        IF webhooks.someone_idle() THEN
            PERFORM pg_notify('webhooks', '');
        END IF;
        RETURN NULL;
    END IF;
    -- The fast path: inserts and deletes of a plain table.
    IF TG_ARGV[15] = 's' AND TG_OP IN ('INSERT', 'DELETE') THEN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
            SELECT TG_ARGV[3], org, TG_ARGV[14], s.j ->> TG_ARGV[16], s.j
              FROM (SELECT to_jsonb(r) AS j FROM new_rows r OFFSET 0) s;
        ELSE
            INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
            SELECT TG_ARGV[5], org, TG_ARGV[14], s.j ->> TG_ARGV[16], s.j
              FROM (SELECT to_jsonb(r) AS j FROM old_rows r OFFSET 0) s;
        END IF;
        IF FOUND AND webhooks.someone_idle() THEN
            PERFORM pg_notify('webhooks', '');
        END IF;
        RETURN NULL;
    END IF;
    tcol := nullif(TG_ARGV[7], '');
    excl := TG_ARGV[8];
    keys := TG_ARGV[9];
    k1 := keys[1];
    multi := cardinality(keys) > 1;
    src := coalesce(TG_ARGV[14], quote_ident(TG_TABLE_SCHEMA) || '.' || quote_ident(TG_TABLE_NAME));
    IF TG_ARGV[13] <> '' AND TG_OP <> 'TRUNCATE' THEN
        -- $1 created/deleted type, $2 tenant column, $3 origin, $4 source,
        -- $5 multi-column key?, $6 key columns, $7 first key column,
        -- $8 excluded columns; for updates also $9 updated type, $10 status
        -- column, $11 status type, $12 entity, $13 filter columns.
        fn := TG_ARGV[13]::oid::regproc::text;
        IF TG_OP IN ('INSERT', 'DELETE') THEN
            EXECUTE format($q$
            INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload)
            SELECT $1, s.j ->> $2, $3, $4,
                   CASE WHEN $5 THEN webhooks.row_key(s.j, $6)
                        ELSE s.j ->> $7 END,
                   %s(s.r) - $8
              FROM (SELECT ROW(r.*)::%s AS r, to_jsonb(r) AS j FROM %s r OFFSET 0) s$q$,
                fn, TG_RELID::regclass, CASE TG_OP WHEN 'INSERT' THEN 'new_rows' ELSE 'old_rows' END)
            USING CASE TG_OP WHEN 'INSERT' THEN TG_ARGV[3] ELSE TG_ARGV[5] END, tcol, org, src,
                  multi, keys, k1, excl;
        ELSE
            EXECUTE format($q$
            INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, previous)
            SELECT CASE WHEN x.oj IS NULL THEN $1
                        WHEN x.j IS NULL THEN $14
                        WHEN $10 IS NOT NULL AND x.c ? $10
                            THEN coalesce(nullif($11, ''),
                                          $12 || '.' || nullif(regexp_replace(lower(x.j ->> $10), '[^a-z0-9_.:-]+', '_', 'g'), ''),
                                          $9)
                        ELSE $9 END,
                   coalesce(x.j, x.oj) ->> $2, $3, $4, x.k,
                   CASE WHEN x.j IS NOT NULL THEN %1$s(x.r) ELSE %1$s(x.ro) END - $8, x.c - $8
              FROM (SELECT n.j, n.r, o.j AS oj, o.r AS ro, coalesce(n.k, o.k) AS k,
                           CASE WHEN n.j IS NOT NULL AND o.j IS NOT NULL THEN
                               (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(o.j) e
                                 WHERE n.j -> e.key IS DISTINCT FROM e.value) END AS c
                      FROM (SELECT s.r, s.j, CASE WHEN $5 THEN webhooks.row_key(s.j, $6)
                                                  ELSE s.j ->> $7 END AS k
                              FROM (SELECT ROW(r.*)::%2$s AS r, to_jsonb(r) AS j FROM new_rows r OFFSET 0) s) n
                      FULL JOIN
                           (SELECT s.r, s.j, CASE WHEN $5 THEN webhooks.row_key(s.j, $6)
                                                  ELSE s.j ->> $7 END AS k
                              FROM (SELECT ROW(r.*)::%2$s AS r, to_jsonb(r) AS j FROM old_rows r OFFSET 0) s) o
                        ON o.k = n.k
                    OFFSET 0) x
             WHERE x.j IS NULL OR x.oj IS NULL
                OR CASE WHEN $13 IS NULL THEN x.c IS NOT NULL
                        ELSE x.c ?| $13 OR ($10 IS NOT NULL AND x.c ? $10) END$q$, fn, TG_RELID::regclass)
            USING TG_ARGV[3], tcol, org, src, multi, keys, k1, excl, TG_ARGV[4],
                  nullif(TG_ARGV[10], ''), TG_ARGV[6], TG_ARGV[0], nullif(TG_ARGV[11], '')::text[], TG_ARGV[5];
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 AND webhooks.someone_idle() THEN
            PERFORM pg_notify('webhooks', '');
        END IF;
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload)
        SELECT TG_ARGV[3], s.j ->> tcol, org, src,
               CASE WHEN multi THEN webhooks.row_key(s.j, keys)
                    ELSE s.j ->> k1 END,
               s.j - excl
          FROM (SELECT to_jsonb(r) AS j FROM new_rows r OFFSET 0) s;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload)
        SELECT TG_ARGV[5], s.j ->> tcol, org, src,
               CASE WHEN multi THEN webhooks.row_key(s.j, keys)
                    ELSE s.j ->> k1 END,
               s.j - excl
          FROM (SELECT to_jsonb(r) AS j FROM old_rows r OFFSET 0) s;
    ELSIF TG_OP = 'UPDATE' THEN
        scol := nullif(TG_ARGV[10], '');
        cols := nullif(TG_ARGV[11], '')::text[];
        INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, previous)
        SELECT CASE WHEN x.oj IS NULL THEN TG_ARGV[3]
                    WHEN x.j IS NULL THEN TG_ARGV[5]
                    WHEN scol IS NOT NULL AND x.c ? scol
                        THEN coalesce(nullif(TG_ARGV[6], ''),
                                      TG_ARGV[0] || '.' || nullif(regexp_replace(lower(x.j ->> scol), '[^a-z0-9_.:-]+', '_', 'g'), ''),
                                      TG_ARGV[4])
                    ELSE TG_ARGV[4] END,
               coalesce(x.j, x.oj) ->> tcol, org, src, x.k, coalesce(x.j, x.oj) - excl, x.c - excl
          FROM (SELECT n.j, o.j AS oj, coalesce(n.k, o.k) AS k,
                       CASE WHEN n.j IS NOT NULL AND o.j IS NOT NULL THEN
                           (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(o.j) e
                             WHERE n.j -> e.key IS DISTINCT FROM e.value) END AS c
                  FROM (SELECT s.j, CASE WHEN multi THEN webhooks.row_key(s.j, keys)
                                         ELSE s.j ->> k1 END AS k
                          FROM (SELECT to_jsonb(r) AS j FROM new_rows r OFFSET 0) s) n
                  FULL JOIN
                       (SELECT s.j, CASE WHEN multi THEN webhooks.row_key(s.j, keys)
                                         ELSE s.j ->> k1 END AS k
                          FROM (SELECT to_jsonb(r) AS j FROM old_rows r OFFSET 0) s) o
                    ON o.k = n.k
                OFFSET 0) x
         WHERE x.j IS NULL OR x.oj IS NULL
            OR CASE WHEN cols IS NULL THEN x.c IS NOT NULL
                    ELSE x.c ?| cols OR (scol IS NOT NULL AND x.c ? scol) END;
    ELSIF TG_OP = 'TRUNCATE' THEN
        INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload)
        VALUES (TG_ARGV[12], NULL, org, src, NULL, '{}'::jsonb);
    END IF;
    IF FOUND AND webhooks.someone_idle() THEN
        PERFORM pg_notify('webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

-- The capture of a plain table's inserts and deletes (V10): what capture()'s
-- fast path does, per statement over the transition table or, with
-- watch()'s "per_row", per row (no transition table, which is what a
-- single-row statement mostly paid for). Same arguments as capture().
-- watch() attaches it only where it can run no code but PostgreSQL's own:
-- the fast path (so no payload function) and columns whose types are all
-- built in (so to_jsonb() consults no cast to json a table's owner
-- defined). That is why it can do without capture()'s SET clauses, which a
-- single-row INSERT paid for twice (set, then undo) at every call: every
-- function, type and operator below is schema-qualified and nothing looks
-- an operator up by name (no IN, NULLIF, IS DISTINCT FROM or CASE x WHEN),
-- so the writer's search_path, whatever it holds, changes nothing it calls;
-- the transition tables are found before any relation of the same name.
-- The test a_hostile_search_path_changes_nothing_capture_calls puts a
-- schema first on the writer's path that defines every name used here.
CREATE OR REPLACE FUNCTION webhooks.plain_capture() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER AS $$
DECLARE
    org pg_catalog.text := pg_catalog.current_setting('webhooks.origin', true);
    j   pg_catalog.jsonb;
BEGIN
    IF org OPERATOR(pg_catalog.=) '' THEN
        org := NULL;
    ELSIF org IS NOT NULL THEN
        org := webhooks.origin_verified(org);
    END IF;
    IF TG_LEVEL OPERATOR(pg_catalog.=) 'ROW' THEN
        IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
            j := pg_catalog.to_jsonb(NEW);
            INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
            VALUES (TG_ARGV[3], org, TG_ARGV[14], j OPERATOR(pg_catalog.->>) TG_ARGV[16], j);
        ELSE
            j := pg_catalog.to_jsonb(OLD);
            INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
            VALUES (TG_ARGV[5], org, TG_ARGV[14], j OPERATOR(pg_catalog.->>) TG_ARGV[16], j);
        END IF;
        IF webhooks.someone_idle() THEN
            PERFORM pg_catalog.pg_notify('webhooks', '');
        END IF;
        RETURN NULL;
    END IF;
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
        SELECT TG_ARGV[3], org, TG_ARGV[14], s.j OPERATOR(pg_catalog.->>) TG_ARGV[16], s.j
          FROM (SELECT pg_catalog.to_jsonb(r) AS j FROM new_rows r OFFSET 0) s;
    ELSE
        INSERT INTO webhooks.events (event_type, origin, source_table, row_key, payload)
        SELECT TG_ARGV[5], org, TG_ARGV[14], s.j OPERATOR(pg_catalog.->>) TG_ARGV[16], s.j
          FROM (SELECT pg_catalog.to_jsonb(r) AS j FROM old_rows r OFFSET 0) s;
    END IF;
    IF FOUND AND webhooks.someone_idle() THEN
        PERFORM pg_catalog.pg_notify('webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

-- Can webhooks.plain_capture() capture this table: are all its columns of
-- built-in types (through domains; arrays of built-in types are built in)?
-- A type a user created may have a cast to json that to_jsonb() would call.
CREATE OR REPLACE FUNCTION webhooks.plain_capture_ok(target regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE t(oid) AS (
        SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT y.typbasetype FROM t JOIN pg_type y ON y.oid = t.oid WHERE y.typtype = 'd'
    )
    SELECT NOT EXISTS (SELECT 1 FROM t JOIN pg_type y ON y.oid = t.oid
                        WHERE y.typtype <> 'd' AND t.oid >= 16384)
$$;

-- A row as the payload it would be captured as, computed with
-- webhooks_capture's rights (for resend: a cast the table's owner defined
-- never runs with the caller's rights).
CREATE OR REPLACE FUNCTION webhooks.row_payload(r anyelement) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(r)
$$;

-- The same through the table's payload function (by oid), with the same
-- rights as capture.
CREATE OR REPLACE FUNCTION webhooks.row_payload(fn oid, r anyelement) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    out jsonb;
BEGIN
    IF fn IS NULL THEN
        RETURN to_jsonb(r);
    END IF;
    EXECUTE format('SELECT %s($1)', fn::regproc) INTO out USING r;
    RETURN out;
END
$$;

-- Ownership and EXECUTE: capture code belongs to the role that can do
-- nothing else; migrate is a member of it, so it can still replace them.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY['webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure,
                             'webhooks.row_payload(anyelement)'::regprocedure,
                             'webhooks.row_payload(oid, anyelement)'::regprocedure] LOOP
        IF (SELECT proowner FROM pg_proc WHERE oid = f) <> 'webhooks_capture'::regrole THEN
            -- Changing an owner needs the new owner to be able to create in
            -- the schema: granted for this statement only.
            GRANT CREATE ON SCHEMA webhooks TO webhooks_capture;
            EXECUTE format('ALTER FUNCTION %s OWNER TO webhooks_capture', f);
            REVOKE CREATE ON SCHEMA webhooks FROM webhooks_capture;
        END IF;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION webhooks.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.plain_capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.row_payload(anyelement) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.row_payload(oid, anyelement) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.emit(text, jsonb, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.emit_many(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.wake() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.origin_verified(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.capture() TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.plain_capture() TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.emit(text, jsonb, text, text, text, jsonb) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.emit_many(jsonb) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.wake() TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.origin_verified(text) TO webhooks_capture, webhooks_app;

-- The arguments of a trigger (pg_trigger.tgargs: NUL-terminated strings).
CREATE OR REPLACE FUNCTION webhooks.trigger_args(args bytea) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    out text[] := '{}';
    p   integer;
BEGIN
    LOOP
        p := position('\x00'::bytea IN args);
        EXIT WHEN p = 0;
        out := out || convert_from(substring(args FROM 1 FOR p - 1), 'UTF8');
        args := substring(args FROM p + 1);
    END LOOP;
    RETURN out;
END
$$;

-- Which tables are captured, and how: read from the capture triggers
-- themselves, so it can never disagree with what runs.
CREATE OR REPLACE VIEW webhooks.watched AS
SELECT DISTINCT ON (t.tgrelid) t.tgrelid::regclass AS target, a[1] AS entity, a[2]::jsonb AS options,
       a[3]::jsonb AS attnums
  FROM pg_trigger t CROSS JOIN LATERAL webhooks.trigger_args(t.tgargs) a
 WHERE t.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure)
 ORDER BY t.tgrelid, t.oid;

-- Drop a table's capture triggers (internal): ours by function, whatever
-- their names, and those of pgwebhooks versions that generated code.
CREATE OR REPLACE FUNCTION webhooks.unwatch_triggers(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tgname FROM pg_trigger
              WHERE tgrelid = target AND NOT tgisinternal
                AND (tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure)
                     OR tgname IN ('webhooks_capture_insert', 'webhooks_capture_update', 'webhooks_capture_delete'))
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, target);
    END LOOP;
END
$$;

-- Only the table's owner (or a member of the owning role, a superuser
-- included) may change what its writes emit.
CREATE OR REPLACE FUNCTION webhooks.watch_check_owner(target regclass, what text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    owner oid;
BEGIN
    SELECT c.relowner INTO owner FROM pg_class c WHERE c.oid = target;
    IF NOT pg_has_role(current_user, owner, 'USAGE') THEN
        RAISE EXCEPTION 'webhooks.%: only the owner of % (role %) may change its capture; % is not a member of it',
                        what, target, owner::regrole, current_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Call it as the table''s owner (SET ROLE to it), or have a superuser call it.';
    END IF;
END
$$;

-- Attach capture to a table. Calling it again replaces the options. Runs
-- with the caller's rights: the table's owner (which needs the role
-- webhooks_app, for the EXECUTE on webhooks.capture()) or a superuser.
CREATE OR REPLACE FUNCTION webhooks.watch(target regclass, entity text, options jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel      record;
    opts     jsonb;
    ops      text[];
    pk       text[];
    nums     jsonb;
    args     text;
    names    jsonb;
    pfn      regprocedure;
    fnrow    record;
    fnschema text;
    fast     boolean;
    ins_del  text;
    ins_ref  text := 'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT';
    del_ref  text := 'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT';
BEGIN
    SELECT c.relkind, c.relnamespace, c.reltype INTO rel FROM pg_class c WHERE c.oid = target;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'webhooks.watch: % is not a table', target USING ERRCODE = 'wrong_object_type';
    END IF;
    IF rel.relnamespace = 'webhooks'::regnamespace THEN
        RAISE EXCEPTION 'webhooks.watch: % belongs to pgwebhooks itself', target USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM webhooks.watch_check_owner(target, 'watch');
    opts := webhooks.watch_options(target, entity, options);
    names := coalesce(opts->'names', '{}');
    ops := CASE WHEN opts ? 'ops' THEN ARRAY(SELECT jsonb_array_elements_text(opts->'ops'))
                ELSE ARRAY['insert', 'update', 'delete', 'truncate'] END;

    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = target AND i.indisprimary;
    IF 'update' = ANY (ops) AND pk IS NULL THEN
        RAISE EXCEPTION 'webhooks.watch: % has no primary key, so updates cannot be paired with their previous values', target
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Add a primary key, or watch only inserts and deletes: {"ops": ["insert", "delete"]}.';
    END IF;

    -- The payload function: f(<the table's row>) RETURNS jsonb, owned by
    -- the caller (or a role it belongs to), so that capture calls only code
    -- the table's owner already controls; capture runs it as webhooks_capture
    -- unless it is SECURITY DEFINER.
    IF opts ? 'payload' THEN
        IF jsonb_typeof(opts->'payload') <> 'string' OR opts->>'payload' = '' THEN
            RAISE EXCEPTION 'webhooks.watch: "payload" must name a function, e.g. "app.order_payload"'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        pfn := to_regprocedure(CASE WHEN strpos(opts->>'payload', '(') > 0 THEN opts->>'payload'
                                    ELSE format('%s(%s)', opts->>'payload', format_type(rel.reltype, NULL)) END);
        IF pfn IS NULL THEN
            RAISE EXCEPTION 'webhooks.watch: "payload" names %, but there is no function %(%)',
                            opts->>'payload', opts->>'payload', format_type(rel.reltype, NULL)
                USING ERRCODE = 'undefined_function',
                      HINT = format('A payload function takes the table''s row: CREATE FUNCTION %s(r %s) RETURNS jsonb ...',
                                    opts->>'payload', format_type(rel.reltype, NULL));
        END IF;
        SELECT p.pronargs, p.proargtypes[0] AS arg, p.prorettype, p.proretset, p.prokind, p.prosecdef,
               p.proowner, p.proconfig INTO fnrow FROM pg_proc p WHERE p.oid = pfn;
        IF fnrow.pronargs <> 1 OR fnrow.arg <> rel.reltype THEN
            RAISE EXCEPTION 'webhooks.watch: payload function % must take exactly one argument, a row of %', pfn, target
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF fnrow.prorettype <> 'jsonb'::regtype OR fnrow.proretset OR fnrow.prokind <> 'f' THEN
            RAISE EXCEPTION 'webhooks.watch: payload function % must return jsonb (one value, not a set)', pfn
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT pg_has_role(current_user, fnrow.proowner, 'USAGE') THEN
            RAISE EXCEPTION 'webhooks.watch: payload function % belongs to role %; only its owner may make capture call it',
                            pfn, fnrow.proowner::regrole
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- Calling it by name needs the schema too (USAGE finds objects in
        -- it; it reads nothing).
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO webhooks_capture', pfn);
        SELECT p.pronamespace::regnamespace::text INTO fnschema FROM pg_proc p WHERE p.oid = pfn;
        IF NOT has_schema_privilege('webhooks_capture', fnschema, 'USAGE') THEN
            BEGIN
                EXECUTE format('GRANT USAGE ON SCHEMA %s TO webhooks_capture', fnschema);
            EXCEPTION WHEN insufficient_privilege THEN
                NULL;
            END;
            IF NOT has_schema_privilege('webhooks_capture', fnschema, 'USAGE') THEN
                RAISE EXCEPTION 'webhooks.watch: capture cannot reach schema % of payload function %', fnschema, pfn
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = format('Have the schema''s owner run: GRANT USAGE ON SCHEMA %s TO webhooks_capture;', fnschema);
            END IF;
        END IF;
        IF NOT fnrow.prosecdef THEN
            RAISE WARNING 'webhooks.watch: payload function % is SECURITY INVOKER: capture runs it as webhooks_capture, which can read no table', pfn
                USING HINT = 'If it reads other tables (joins), declare it SECURITY DEFINER, owned by the table''s owner, with SET search_path.';
        ELSIF NOT EXISTS (SELECT 1 FROM unnest(fnrow.proconfig) c WHERE c LIKE 'search_path=%') THEN
            RAISE NOTICE 'webhooks.watch: payload function % runs with search_path pg_catalog, pg_temp (capture''s): qualify the tables it reads, or give it SET search_path', pfn;
        END IF;
        opts := jsonb_set(opts, '{payload}', to_jsonb(pfn::text));
    END IF;

    -- The columns the options name, by attribute number, so that renaming
    -- a column later (webhooks.on_ddl) keeps its meaning: an excluded column
    -- stays excluded under its new name.
    SELECT jsonb_strip_nulls(jsonb_build_object(
               'exclude', (SELECT jsonb_agg(a.attnum) FROM pg_attribute a
                            WHERE a.attrelid = target AND a.attname::text IN (SELECT jsonb_array_elements_text(opts->'exclude'))),
               'columns', (SELECT jsonb_agg(a.attnum) FROM pg_attribute a
                            WHERE a.attrelid = target AND a.attname::text IN (SELECT jsonb_array_elements_text(opts->'columns'))),
               'status_column', (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = target AND a.attname::text = opts->>'status_column'),
               'tenant_column', (SELECT a.attnum FROM pg_attribute a WHERE a.attrelid = target AND a.attname::text = opts->>'tenant_column'),
               'payload', pfn::oid))
      INTO nums;

    -- The fast path: one key column, nothing excluded, no tenant column, no
    -- payload function. Its inserts and deletes take plain_capture() when
    -- every column's type is built in (it runs without SET clauses, see
    -- there), and run per row with "per_row".
    fast := cardinality(pk) = 1 AND pfn IS NULL AND NOT opts ? 'tenant_column'
            AND jsonb_array_length(coalesce(opts->'exclude', '[]')) = 0;
    ins_del := CASE WHEN fast AND webhooks.plain_capture_ok(target) THEN 'webhooks.plain_capture' ELSE 'webhooks.capture' END;
    IF (opts->>'per_row')::boolean THEN
        IF NOT fast THEN
            RAISE EXCEPTION 'webhooks.watch: "per_row" needs a table with a one-column primary key and no "exclude", "tenant_column" or "payload"'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        ins_ref := 'FOR EACH ROW';
        del_ref := 'FOR EACH ROW';
    END IF;

    -- Every argument is a quoted literal: nothing here becomes code.
    args := concat_ws(', ',
        quote_literal(entity), quote_literal(opts::text), quote_literal(nums::text),
        quote_literal(coalesce(names->>'insert', entity || '.created')),
        quote_literal(coalesce(names->>'update', entity || '.updated')),
        quote_literal(coalesce(names->>'delete', entity || '.deleted')),
        quote_literal(coalesce(names->>'status', '')),
        quote_literal(coalesce(opts->>'tenant_column', '')),
        quote_literal(ARRAY(SELECT jsonb_array_elements_text(coalesce(opts->'exclude', '[]')))::text),
        quote_literal(coalesce(pk, '{}')::text),
        quote_literal(coalesce(opts->>'status_column', '')),
        quote_literal(CASE WHEN opts ? 'columns' THEN ARRAY(SELECT jsonb_array_elements_text(opts->'columns'))::text ELSE '' END),
        quote_literal(coalesce(names->>'truncate', entity || '.truncated')),
        quote_literal(coalesce(pfn::oid::text, '')),
        quote_literal(target::text),
        quote_literal(CASE WHEN fast THEN 's' ELSE '' END),
        quote_literal(coalesce(pk[1], '')));

    PERFORM webhooks.unwatch_triggers(target);
    IF 'insert' = ANY (ops) THEN
        EXECUTE format('CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON %s %s EXECUTE FUNCTION %s(%s)',
                       target, ins_ref, ins_del, args);
    END IF;
    IF 'update' = ANY (ops) THEN
        EXECUTE format('CREATE TRIGGER webhooks_capture_update AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture(%s)', target, args);
    END IF;
    IF 'delete' = ANY (ops) THEN
        EXECUTE format('CREATE TRIGGER webhooks_capture_delete AFTER DELETE ON %s %s EXECUTE FUNCTION %s(%s)',
                       target, del_ref, ins_del, args);
    END IF;
    IF 'truncate' = ANY (ops) THEN
        EXECUTE format('CREATE TRIGGER webhooks_capture_truncate AFTER TRUNCATE ON %s '
                       'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture(%s)', target, args);
    END IF;
END
$$;

-- Stop capturing a table. Events already written stay in the outbox.
CREATE OR REPLACE FUNCTION webhooks.unwatch(target regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was boolean;
BEGIN
    PERFORM webhooks.watch_check_owner(target, 'unwatch');
    was := EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = target
                      AND t.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure));
    PERFORM webhooks.unwatch_triggers(target);
    RETURN was;
END
$$;

-- A watched table's options with the names its columns have now (found by
-- attribute number): renamed columns keep their role; an excluded column
-- stays excluded under its old name too (fail closed); a status or tenant
-- column that is gone is an error, since capture would silently change.
CREATE OR REPLACE FUNCTION webhooks.watch_options_now(target regclass) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w    record;
    opts jsonb;
    k    text;
    col  text;
BEGIN
    SELECT * INTO w FROM webhooks.watched x WHERE x.target = watch_options_now.target;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    opts := w.options;
    IF opts ? 'exclude' THEN
        opts := jsonb_set(opts, '{exclude}', (
            SELECT coalesce(jsonb_agg(DISTINCT n), '[]') FROM (
                SELECT a.attname::text AS n FROM pg_attribute a
                 WHERE a.attrelid = target AND NOT a.attisdropped
                   AND a.attnum IN (SELECT jsonb_array_elements_text(coalesce(w.attnums->'exclude', '[]'))::smallint)
                UNION
                SELECT e FROM jsonb_array_elements_text(w.options->'exclude') e
                 WHERE EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = target AND NOT a.attisdropped
                                                              AND a.attname::text = e)) x));
    END IF;
    IF opts ? 'columns' THEN
        opts := jsonb_set(opts, '{columns}', (
            SELECT coalesce(jsonb_agg(a.attname::text ORDER BY a.attnum), '[]') FROM pg_attribute a
             WHERE a.attrelid = target AND NOT a.attisdropped
               AND a.attnum IN (SELECT jsonb_array_elements_text(coalesce(w.attnums->'columns', '[]'))::smallint)));
        IF jsonb_array_length(opts->'columns') = 0 THEN
            RAISE EXCEPTION 'webhooks.watch: every column named in "columns" of % is gone', target
                USING ERRCODE = 'undefined_column',
                      HINT = 'Call webhooks.watch() with new options first, then alter the table.';
        END IF;
    END IF;
    IF opts ? 'payload' AND w.attnums ? 'payload' THEN
        opts := jsonb_set(opts, '{payload}', to_jsonb(coalesce(
            (SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = (w.attnums->>'payload')::oid),
            opts->>'payload')));
    END IF;
    FOREACH k IN ARRAY ARRAY['status_column', 'tenant_column'] LOOP
        IF opts ? k THEN
            SELECT a.attname::text INTO col FROM pg_attribute a
             WHERE a.attrelid = target AND NOT a.attisdropped AND a.attnum = (w.attnums->>k)::smallint;
            IF col IS NULL THEN
                RAISE EXCEPTION 'webhooks.watch: "%" names column "%", which % does not have any more', k, opts->>k, target
                    USING ERRCODE = 'undefined_column',
                          HINT = 'Call webhooks.watch() with new options first, then alter the table.';
            END IF;
            opts := jsonb_set(opts, ARRAY[k], to_jsonb(col));
        END IF;
    END LOOP;
    RETURN opts;
END
$$;

-- Refresh the capture of the watched tables the caller owns (all of them
-- for a superuser) after their columns changed, where no event trigger does
-- it (migrate run without a superuser).
CREATE OR REPLACE FUNCTION webhooks.rewatch() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w record;
    n integer := 0;
BEGIN
    FOR w IN SELECT x.target, x.entity FROM webhooks.watched x JOIN pg_class c ON c.oid = x.target
              WHERE pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY x.target::oid LOOP
        PERFORM webhooks.watch(w.target, w.entity, webhooks.watch_options_now(w.target));
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- After any DDL on a watched table (ALTER TABLE, but also ALTER VIEW ...
-- RENAME COLUMN and ALTER INDEX ... RENAME, which Postgres accepts on a
-- table), refresh its capture from the stored options by attribute number.
-- Every other DDL returns at once, having read nothing but the catalog: a
-- role with no rights on schema webhooks alters and drops its tables as
-- before. SECURITY DEFINER (owned by the superuser who installed the event
-- trigger) so that a table's owner needs no grant either; what it runs is
-- only watch(), which builds no code from names.
CREATE OR REPLACE FUNCTION webhooks.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t oid;
BEGIN
    IF current_setting('webhooks.in_on_ddl', true) = 'on' THEN
        RETURN;
    END IF;
    FOR t IN SELECT DISTINCT c.objid FROM pg_event_trigger_ddl_commands() c
              WHERE c.classid = 'pg_class'::regclass
                AND EXISTS (SELECT 1 FROM pg_trigger g
                             WHERE g.tgrelid = c.objid
                               AND g.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure))
    LOOP
        PERFORM set_config('webhooks.in_on_ddl', 'on', true);
        PERFORM webhooks.watch(t::regclass, w.entity, webhooks.watch_options_now(t::regclass))
           FROM webhooks.watched w WHERE w.target = t::regclass;
        PERFORM set_config('webhooks.in_on_ddl', 'off', true);
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION webhooks.on_ddl() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.watch(regclass, text, jsonb) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.unwatch(regclass) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.rewatch() TO webhooks_app;
GRANT SELECT ON webhooks.watched TO webhooks_app;

-- Event triggers need a superuser; without one, capture still works and
-- the docs say to call webhooks.rewatch() after altering a watched table.
DO $$
BEGIN
    DROP EVENT TRIGGER IF EXISTS webhooks_alter_table;
    DROP EVENT TRIGGER IF EXISTS webhooks_drop_table;
    DROP EVENT TRIGGER IF EXISTS webhooks_ddl;
    CREATE EVENT TRIGGER webhooks_ddl ON ddl_command_end EXECUTE FUNCTION webhooks.on_ddl();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pgwebhooks: not a superuser, so no event trigger: after altering a watched table, its owner runs SELECT webhooks.rewatch()';
END
$$;
DROP FUNCTION IF EXISTS webhooks.on_alter_table();
DROP FUNCTION IF EXISTS webhooks.on_drop_table();
DROP FUNCTION IF EXISTS webhooks.define_capture(text, text, text);

-- From versions that generated a function per table (and kept the options
-- in a table, renamed to watched_v4 by migration V5): move every watched
-- table to webhooks.capture() and drop the generated code.
DO $$
DECLARE
    w record;
    f regprocedure;
BEGIN
    IF to_regclass('webhooks.watched_v4') IS NOT NULL THEN
        FOR w IN EXECUTE 'SELECT target, entity, options FROM webhooks.watched_v4 ORDER BY target::oid' LOOP
            PERFORM webhooks.watch(w.target, w.entity, w.options);
        END LOOP;
        DROP TABLE webhooks.watched_v4;
    END IF;
    FOR f IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'webhooks'::regnamespace AND p.proname ~ '^capture_[0-9]+_(insert|update|delete)$' LOOP
        EXECUTE format('DROP FUNCTION %s', f);
    END LOOP;
END
$$;

-- From versions before V10, where every watched table's inserts and deletes
-- ran webhooks.capture(): move the plain tables (fast path, built-in column
-- types) to webhooks.plain_capture(), keeping their options. Only tables
-- this role may re-watch (their owner's members; a superuser: all); the
-- others keep working as they were until their owner runs
-- SELECT webhooks.rewatch().
DO $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT DISTINCT x.target, x.entity FROM webhooks.watched x
               JOIN pg_trigger t ON t.tgrelid = x.target AND t.tgfoid = 'webhooks.capture()'::regprocedure
              WHERE (t.tgtype::integer & (4 | 8)) <> 0
                AND (webhooks.trigger_args(t.tgargs))[16] = 's'
                AND webhooks.plain_capture_ok(x.target)
              ORDER BY x.target LOOP
        IF pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = w.target), 'USAGE') THEN
            PERFORM webhooks.watch(w.target, w.entity, webhooks.watch_options_now(w.target));
        ELSE
            RAISE NOTICE 'pgwebhooks: % keeps its capture of before V10 until its owner runs SELECT webhooks.rewatch()', w.target;
        END IF;
    END LOOP;
END
$$;
