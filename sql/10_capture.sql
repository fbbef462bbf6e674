-- Capture: how app writes become rows in webhooks.events.
--
-- Applied by `pgwebhooks migrate` after the migrations, every time (every
-- statement here is idempotent).
--
-- Who runs what (docs/capture.md's "Roles and grants" says the same for users):
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
        OR lower(e ->> 'type') LIKE 'webhooks.%'
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'webhooks.emit_many: invalid event %', left(bad::text, 200)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Each event is an object with "type" (letters, digits and _ . : -, not webhooks.*: those are pgwebhooks'' own) and "data".';
    END IF;
    -- A tenant listed in webhooks.tenant_emitters takes events only from
    -- sessions whose login role is a member of one of its emitters.
    SELECT e -> 'tenant_id' INTO bad FROM jsonb_array_elements(events) e
     WHERE e ->> 'tenant_id' IS NOT NULL
       AND EXISTS (SELECT 1 FROM webhooks.tenant_emitters t WHERE t.tenant_id = e ->> 'tenant_id')
       AND NOT EXISTS (SELECT 1 FROM webhooks.tenant_emitters t
                        WHERE t.tenant_id = e ->> 'tenant_id' AND pg_has_role(session_user, t.emitter, 'MEMBER'))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'webhooks.emit: role % may not emit events for tenant %', session_user, bad #>> '{}'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'webhooks.tenant_emitters lists the roles that may emit for that tenant.';
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
    IF event_type IS NULL OR event_type !~ '^[A-Za-z0-9_][A-Za-z0-9_.:-]*$' OR lower(event_type) LIKE 'webhooks.%' THEN
        RAISE EXCEPTION 'webhooks.emit: invalid event type %', coalesce(quote_literal(event_type), 'NULL')
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Event types are letters, digits and _ . : - (e.g. appointment.created); webhooks.* are pgwebhooks'' own.';
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
        IF k NOT IN ('ops', 'status_column', 'columns', 'exclude', 'tenant_column', 'names', 'payload', 'per_row', 'on_error') THEN
            RAISE EXCEPTION 'webhooks.watch: unknown option "%"', k USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Options are ops, status_column, columns, exclude, tenant_column, names, payload, per_row, on_error.';
        END IF;
    END LOOP;
    IF opts ? 'on_error' AND (jsonb_typeof(opts->'on_error') <> 'string' OR opts->>'on_error' NOT IN ('open', 'fail')) THEN
        RAISE EXCEPTION 'webhooks.watch: "on_error" must be "open" (capture the row as it is, marked; the default) or "fail" (fail the write)'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- webhooks.* events are pgwebhooks' own (operational events).
    IF lower(entity) = 'webhooks' OR lower(entity) LIKE 'webhooks.%'
       OR EXISTS (SELECT 1 FROM jsonb_each_text(CASE WHEN jsonb_typeof(opts->'names') = 'object' THEN opts->'names' END) x
                   WHERE lower(x.value) LIKE 'webhooks.%') THEN
        RAISE EXCEPTION 'webhooks.watch: event types webhooks.* are pgwebhooks'' own; choose another entity or name'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
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

-- The shaping half of a shaped table's capture (V15): a table with a
-- payload function, or with a column whose type has a cast to json a user
-- defined. Such a table's code must never run as webhooks_capture (a role
-- every table owner's capture shares, audit N1) nor with the migrate
-- role's or a superuser's rights (first audit, C1/C2), so it runs here, in
-- a SECURITY INVOKER trigger that fires just before the table's capture()
-- trigger of the same statement (trigger names sort it first):
-- * with the writer's rights, in the writer's session, with its
--   search_path: what the app would get calling the function itself, and
--   nothing the table's owner could not already do with a trigger of its
--   own (a trigger function runs as the writer). So a payload function
--   written the natural way (LANGUAGE sql, no SECURITY DEFINER) works for
--   the app's own role; a writer that lacks a right it needs gets the
--   row's own JSON, marked (below).
-- * never in a superuser's session on a table the superuser does not own
--   (code there could SET ROLE to anyone): such rows are captured as
--   their own JSON (a column whose cast is the owner's code: as text),
--   marked, unless the write happens inside a SECURITY DEFINER function,
--   where Postgres refuses SET ROLE.
-- * fail-open: if shaping the statement's rows fails, each row is shaped on
--   its own, and a row that still fails is captured with its own JSON and
--   the error (events.shape_error); a WARNING tells the writer. With
--   watch()'s {"on_error": "fail"} the error fails the write instead.
-- It hands capture() the rows as JSON through a transaction-local setting
-- named after the table, the operation and the trigger depth, which
-- capture() reads and clears: {"n": new rows, "o": old rows, each
-- [{"j": row, "p": payload} or {"j": row, "e": error}], "f": failures,
-- "err": the first error}. What a writer could put there itself is only
-- what it could write into the table anyway: types, key, tenant, origin and
-- source are still capture()'s. Every name is qualified; the writer needs
-- no right on schema webhooks.
-- Arguments: 0 payload function's oid ('' none), 1 the watched table's oid
-- (the partitioned root for a partition), 2 on_error ('open' or 'fail'),
-- 3 key columns (text[]), 4 'c' when a column's cast to json is a user's,
-- 5 the table owner's name (watch() writes it again after an ALTER TABLE
-- ... OWNER TO, as after any ALTER TABLE).
CREATE OR REPLACE FUNCTION webhooks.capture_shape() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    root   pg_catalog.oid := TG_ARGV[1]::pg_catalog.oid;
    closed pg_catalog.bool := TG_ARGV[2] OPERATOR(pg_catalog.=) 'fail';
    keys   pg_catalog.text[] := TG_ARGV[3]::pg_catalog.text[];
    casts  pg_catalog.bool := TG_ARGV[4] OPERATOR(pg_catalog.=) 'c';
    fn     pg_catalog.text;
    rname  pg_catalog.text;
    owner  pg_catalog.text;
    skip   pg_catalog.text;
    conv   pg_catalog.text;
    keyx   pg_catalog.text;
    side   pg_catalog.text;
    tt     pg_catalog.text;
    q      pg_catalog.text;
    arr    pg_catalog.jsonb;
    out    pg_catalog.jsonb := '{}';
    rec    record;
    j      pg_catalog.jsonb;
    p      pg_catalog.jsonb;
    e      pg_catalog.text;
    items  pg_catalog.jsonb[];
    nkeys  pg_catalog.text[];
    nulls  pg_catalog.int8;
    failed pg_catalog.int8 := 0;
    err    pg_catalog.text;
BEGIN
    -- The table's and the function's names, from their oids (renames are
    -- followed; qualified unless the writer's search_path finds them as
    -- they are, in which case it finds exactly them). A dropped function
    -- prints as its number: every row then fails to shape.
    rname := root::pg_catalog.regclass::pg_catalog.text;
    IF TG_ARGV[0] OPERATOR(pg_catalog.<>) '' THEN
        fn := TG_ARGV[0]::pg_catalog.oid::pg_catalog.regproc::pg_catalog.text;
        IF fn OPERATOR(pg_catalog.~) '^[0-9]+$' THEN
            fn := pg_catalog.format('"payload function %s, dropped"', fn);
        END IF;
    END IF;
    owner := TG_ARGV[5];
    -- A superuser's session on another owner's table: no owner code, unless
    -- in a SECURITY DEFINER function (where setting the role is refused).
    IF session_user OPERATOR(pg_catalog.<>) COALESCE(owner, '')
       AND (SELECT r.rolsuper FROM pg_catalog.pg_roles r WHERE r.rolname OPERATOR(pg_catalog.=) session_user) THEN
        BEGIN
            PERFORM pg_catalog.set_config('role', pg_catalog.current_setting('role'), true);
            skip := pg_catalog.format('not shaped: written in a session of superuser %s, which runs no code of the table''s owner %s',
                                      session_user, owner);
        EXCEPTION WHEN OTHERS THEN
            skip := NULL;
        END;
    END IF;
    IF skip IS NOT NULL THEN
        FOREACH side IN ARRAY CASE TG_OP WHEN 'INSERT' THEN ARRAY['n'] WHEN 'DELETE' THEN ARRAY['o'] ELSE ARRAY['n', 'o'] END LOOP
            EXECUTE pg_catalog.format(
                'SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(''j'', %s, ''e'', $1)) FROM %s r',
                CASE WHEN casts THEN 'pg_catalog.jsonb_build_object(''row'', r::pg_catalog.text)' ELSE 'pg_catalog.to_jsonb(r)' END,
                CASE side WHEN 'n' THEN 'new_rows' ELSE 'old_rows' END)
               INTO arr USING skip;
            out := out OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(side, COALESCE(arr, '[]'::pg_catalog.jsonb));
        END LOOP;
        RAISE WARNING 'webhooks: %; the rows are captured as they are, marked', skip
            USING HINT = 'Write as the table''s owner (or through a SECURITY DEFINER function), or resend the rows as the owner.';
        PERFORM pg_catalog.set_config(pg_catalog.format('webhooks.shape_%s_%s_%s', TG_RELID, TG_OP, pg_catalog.pg_trigger_depth()),
                                      out::pg_catalog.text, true);
        RETURN NULL;
    END IF;
    -- A partition's row becomes a row of the watched table by column name.
    conv := CASE WHEN TG_RELID OPERATOR(pg_catalog.=) root THEN pg_catalog.format('ROW(r.*)::%s', rname)
                 ELSE pg_catalog.format('pg_catalog.jsonb_populate_record(NULL::%s, pg_catalog.to_jsonb(r))', rname) END;
    keyx := CASE WHEN pg_catalog.cardinality(keys) OPERATOR(pg_catalog.>) 1
                 THEN '(SELECT pg_catalog.jsonb_agg(x.j OPERATOR(pg_catalog.->) u.c ORDER BY u.o) FROM pg_catalog.unnest($1) WITH ORDINALITY u(c, o))::pg_catalog.text'
                 ELSE 'x.j OPERATOR(pg_catalog.->>) ($1)[1]' END;
    FOREACH side IN ARRAY CASE TG_OP WHEN 'INSERT' THEN ARRAY['n'] WHEN 'DELETE' THEN ARRAY['o'] ELSE ARRAY['n', 'o'] END LOOP
        tt := CASE side WHEN 'n' THEN 'new_rows' ELSE 'old_rows' END;
        -- The whole statement at once; an update's old rows need a payload
        -- only when their key changed (they become a deleted event). The
        -- plain form (inserts, deletes, an update's new rows) is the
        -- cheapest to plan: it is planned at every statement.
        q := CASE WHEN fn IS NULL THEN
                 pg_catalog.format('SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(''j'', pg_catalog.to_jsonb(r))) FROM %s r', tt)
             WHEN side OPERATOR(pg_catalog.=) 'n' OR TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
                 pg_catalog.format('SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(''j'', pg_catalog.to_jsonb(r), ''p'', %s(%s))) FROM %s r',
                                   fn, conv, tt)
             ELSE pg_catalog.format(
                 'SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(''j'', x.j) OPERATOR(pg_catalog.||)
                         CASE WHEN x.skip THEN ''{}''::pg_catalog.jsonb ELSE pg_catalog.jsonb_build_object(''p'', %s(x.v)) END)
                    FROM (SELECT x.j, x.v, %s AS skip
                            FROM (SELECT pg_catalog.to_jsonb(r) AS j, %s AS v FROM %s r OFFSET 0) x OFFSET 0) x',
                 fn, pg_catalog.format('%s OPERATOR(pg_catalog.=) ANY ($2)', keyx), conv, tt) END;
        IF side OPERATOR(pg_catalog.=) 'o' AND TG_OP OPERATOR(pg_catalog.=) 'UPDATE' THEN
            nkeys := ARRAY(SELECT CASE WHEN pg_catalog.cardinality(keys) OPERATOR(pg_catalog.>) 1
                                       THEN (SELECT pg_catalog.jsonb_agg((x.value OPERATOR(pg_catalog.->) 'j') OPERATOR(pg_catalog.->) u.c ORDER BY u.o)
                                               FROM pg_catalog.unnest(keys) WITH ORDINALITY u(c, o))::pg_catalog.text
                                       ELSE (x.value OPERATOR(pg_catalog.->) 'j') OPERATOR(pg_catalog.->>) keys[1] END
                             FROM pg_catalog.jsonb_array_elements(
                                      CASE WHEN pg_catalog.jsonb_typeof(out OPERATOR(pg_catalog.->) 'n') OPERATOR(pg_catalog.=) 'array'
                                           THEN out OPERATOR(pg_catalog.->) 'n' ELSE '[]'::pg_catalog.jsonb END) x);
        END IF;
        BEGIN
            EXECUTE q INTO arr USING keys, nkeys;
            -- A payload function that returned NULL: that row, as itself.
            IF fn IS NOT NULL AND pg_catalog.jsonb_path_exists(arr, '$[*].p ? (@ == null)') THEN
                SELECT pg_catalog.jsonb_agg(CASE WHEN pg_catalog.jsonb_typeof(x.value OPERATOR(pg_catalog.->) 'p') OPERATOR(pg_catalog.=) 'null'
                                                 THEN pg_catalog.jsonb_build_object('j', x.value OPERATOR(pg_catalog.->) 'j',
                                                                                     'e', 'the payload function returned NULL')
                                                 ELSE x.value END ORDER BY x.ordinality),
                       pg_catalog.count(*) FILTER (WHERE pg_catalog.jsonb_typeof(x.value OPERATOR(pg_catalog.->) 'p') OPERATOR(pg_catalog.=) 'null')
                  INTO arr, nulls
                  FROM pg_catalog.jsonb_array_elements(arr) WITH ORDINALITY x;
                failed := failed OPERATOR(pg_catalog.+) nulls;
                err := COALESCE(err, 'the payload function returned NULL');
            END IF;
        EXCEPTION WHEN OTHERS THEN
            IF closed THEN
                RAISE;
            END IF;
            -- Row by row: only the rows that fail lose their shape. (If
            -- even that cannot run, the side is left to capture(), which
            -- then captures every row as it is, marked.)
            items := '{}';
            BEGIN
                FOR rec IN EXECUTE pg_catalog.format('SELECT %s AS v FROM %s r', conv, tt) LOOP
                    j := NULL;
                    p := NULL;
                    BEGIN
                        j := pg_catalog.to_jsonb(rec.v);
                        IF fn IS NOT NULL AND NOT (nkeys IS NOT NULL AND
                               CASE WHEN pg_catalog.cardinality(keys) OPERATOR(pg_catalog.>) 1
                                    THEN (SELECT pg_catalog.jsonb_agg(j OPERATOR(pg_catalog.->) u.c ORDER BY u.o)
                                            FROM pg_catalog.unnest(keys) WITH ORDINALITY u(c, o))::pg_catalog.text
                                    ELSE j OPERATOR(pg_catalog.->>) keys[1] END OPERATOR(pg_catalog.=) ANY (nkeys)) THEN
                            EXECUTE pg_catalog.format('SELECT %s($1)', fn) INTO p USING rec.v;
                            IF p IS NULL THEN
                                RAISE EXCEPTION 'the payload function returned NULL';
                            END IF;
                        END IF;
                        items := items OPERATOR(pg_catalog.||) (pg_catalog.jsonb_build_object('j', j)
                                 OPERATOR(pg_catalog.||) pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object('p', p)));
                    EXCEPTION WHEN OTHERS THEN
                        e := pg_catalog.left(SQLSTATE OPERATOR(pg_catalog.||) ': ' OPERATOR(pg_catalog.||) SQLERRM, 1000);
                        failed := failed OPERATOR(pg_catalog.+) 1;
                        err := COALESCE(err, e);
                        -- A cast to json that raised: the row as its text.
                        items := items OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(
                            'j', COALESCE(j, pg_catalog.jsonb_build_object('row', rec.v::pg_catalog.text)), 'e', e);
                    END;
                END LOOP;
                arr := pg_catalog.to_jsonb(items);
            EXCEPTION WHEN OTHERS THEN
                arr := 'null';
            END;
        END;
        out := out OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(side, COALESCE(arr, '[]'::pg_catalog.jsonb));
    END LOOP;
    IF failed OPERATOR(pg_catalog.>) 0 THEN
        out := out OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('f', failed, 'err', err);
        RAISE WARNING 'webhooks: % of the rows this statement wrote to % could not be shaped (%); they are captured with the row''s own JSON and the error', failed, rname, err
            USING HINT = 'Fix the payload function; webhooks.watched shows the table as degraded, and `pgwebhooks resend` sends a row again.';
    END IF;
    PERFORM pg_catalog.set_config(pg_catalog.format('webhooks.shape_%s_%s_%s', TG_RELID, TG_OP, pg_catalog.pg_trigger_depth()),
                                  out::pg_catalog.text, true);
    RETURN NULL;
END
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
--  17 'y' when the table is shaped (a payload function, or a column type
--     with a cast to json of a user's): its rows come from
--     webhooks.capture_shape(), which ran just before (V15)
--  18 the watched table's oid: a partition's triggers carry the
--     partitioned root's, and its name in 14, so a write straight into a
--     partition is captured as the root's (V15)
-- (Triggers written by older versions lack the last ones and take the
-- general path.)
-- With a payload function, data is f(row) instead of the row as JSON,
-- computed by capture_shape() (the function is named by its oid, so a
-- rename is followed); the key, tenant, status and previous values still
-- come from the row's columns. A row capture_shape() could not shape is
-- written with its own JSON and the error in shape_error (fail-open).
-- PL/pgSQL compiles a trigger function once per trigger, so every table
-- gets its own cached plans. An UPDATE pairs old and new rows by key; a row
-- whose key changed has no partner and is emitted as deleted (old key) and
-- created (new key), so no change is ever skipped.
-- The shaped path's INSERT runs with plan_cache_mode = force_generic_plan
-- (set and put back around it): left to choose, Postgres planned it anew
-- at most calls (about 40 us of a single-row insert's capture, measured
-- with track_functions); a SET clause on the function would have cost
-- every other path too.
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
    n     bigint;
    j     jsonb;
    sh    jsonb;
    sname text;
    pcm   text;
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
    IF (TG_ARGV[17] = 'y' OR TG_ARGV[13] <> '') AND TG_OP <> 'TRUNCATE' THEN
        -- A shaped table: the rows as webhooks.capture_shape() made them,
        -- with the table owner's rights, just before this trigger. Nothing
        -- of the table's owner runs here.
        sname := format('webhooks.shape_%s_%s_%s', TG_RELID, TG_OP, pg_trigger_depth());
        sh := nullif(current_setting(sname, true), '')::jsonb;
        IF sh IS NOT NULL THEN
            PERFORM set_config(sname, '', true);
        END IF;
        -- Not shaped (its shaping trigger was disabled, or could not run):
        -- every row as it is, marked. A type whose cast to json is the
        -- owner's code is written as the row's text instead.
        IF sh IS NULL OR TG_OP IN ('INSERT', 'UPDATE') AND jsonb_typeof(sh -> 'n') IS DISTINCT FROM 'array' THEN
            sh := coalesce(sh, '{}') || jsonb_build_object('n',
                (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'j', CASE WHEN TG_ARGV[17] = 'y' THEN jsonb_build_object('row', r::text) ELSE to_jsonb(r) END,
                            'e', 'not shaped: the table''s shaping trigger did not run')), '[]')
                   FROM new_rows r));
            sh := sh || jsonb_build_object('f', (SELECT count(*) FROM jsonb_array_elements(sh -> 'n') x WHERE x ? 'e'),
                                           'err', 'not shaped: the table''s shaping trigger did not run');
        END IF;
        IF TG_OP IN ('DELETE', 'UPDATE') AND jsonb_typeof(sh -> 'o') IS DISTINCT FROM 'array' THEN
            sh := sh || jsonb_build_object('o',
                (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'j', CASE WHEN TG_ARGV[17] = 'y' THEN jsonb_build_object('row', r::text) ELSE to_jsonb(r) END,
                            'e', 'not shaped: the table''s shaping trigger did not run')), '[]')
                   FROM old_rows r));
            sh := sh || jsonb_build_object('f', coalesce((sh ->> 'f')::bigint, 0)
                                                + (SELECT count(*) FROM jsonb_array_elements(sh -> 'o') x WHERE x ? 'e'),
                                           'err', coalesce(sh ->> 'err', 'not shaped: the table''s shaping trigger did not run'));
        END IF;
        pcm := current_setting('plan_cache_mode');
        PERFORM set_config('plan_cache_mode', 'force_generic_plan', true);
        IF TG_OP IN ('INSERT', 'DELETE') THEN
            INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, shape_error)
            SELECT CASE WHEN TG_OP = 'INSERT' THEN TG_ARGV[3] ELSE TG_ARGV[5] END, s.j ->> tcol, org, src,
                   CASE WHEN multi THEN webhooks.row_key(s.j, keys) ELSE s.j ->> k1 END,
                   coalesce(s.p, s.j) - excl, s.e
              FROM (SELECT x -> 'j' AS j, x -> 'p' AS p, x ->> 'e' AS e
                      FROM jsonb_array_elements(sh -> CASE WHEN TG_OP = 'INSERT' THEN 'n' ELSE 'o' END) x OFFSET 0) s;
        ELSE
            scol := nullif(TG_ARGV[10], '');
            cols := nullif(TG_ARGV[11], '')::text[];
            INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, previous, shape_error)
            SELECT CASE WHEN x.oj IS NULL THEN TG_ARGV[3]
                        WHEN x.j IS NULL THEN TG_ARGV[5]
                        WHEN scol IS NOT NULL AND x.c ? scol
                            THEN coalesce(nullif(TG_ARGV[6], ''),
                                          TG_ARGV[0] || '.' || nullif(regexp_replace(lower(x.j ->> scol), '[^a-z0-9_.:-]+', '_', 'g'), ''),
                                          TG_ARGV[4])
                        ELSE TG_ARGV[4] END,
                   coalesce(x.j, x.oj) ->> tcol, org, src, x.k,
                   CASE WHEN x.j IS NOT NULL THEN coalesce(x.p, x.j) ELSE coalesce(x.op, x.oj) END - excl, x.c - excl,
                   CASE WHEN x.j IS NOT NULL THEN x.e ELSE x.oe END
              FROM (SELECT n.j, n.p, n.e, o.j AS oj, o.p AS op, o.e AS oe, coalesce(n.k, o.k) AS k,
                           CASE WHEN n.j IS NOT NULL AND o.j IS NOT NULL THEN
                               (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(o.j) e
                                 WHERE n.j -> e.key IS DISTINCT FROM e.value) END AS c
                      FROM (SELECT s.j, s.p, s.e, CASE WHEN multi THEN webhooks.row_key(s.j, keys) ELSE s.j ->> k1 END AS k
                              FROM (SELECT y -> 'j' AS j, y -> 'p' AS p, y ->> 'e' AS e
                                      FROM jsonb_array_elements(sh -> 'n') y OFFSET 0) s) n
                      FULL JOIN
                           (SELECT s.j, s.p, s.e, CASE WHEN multi THEN webhooks.row_key(s.j, keys) ELSE s.j ->> k1 END AS k
                              FROM (SELECT y -> 'j' AS j, y -> 'p' AS p, y ->> 'e' AS e
                                      FROM jsonb_array_elements(sh -> 'o') y OFFSET 0) s) o
                        ON o.k = n.k
                    OFFSET 0) x
             WHERE x.j IS NULL OR x.oj IS NULL
                OR CASE WHEN cols IS NULL THEN x.c IS NOT NULL
                        ELSE x.c ?| cols OR (scol IS NOT NULL AND x.c ? scol) END;
        END IF;
        GET DIAGNOSTICS n = ROW_COUNT;
        PERFORM set_config('plan_cache_mode', pcm, true);
        -- Degraded while shaping fails; healthy again at its next success.
        IF coalesce((sh ->> 'f')::bigint, 0) > 0 THEN
            PERFORM webhooks.capture_fault(coalesce(nullif(TG_ARGV[18], '')::oid, TG_RELID), (sh ->> 'f')::bigint, sh ->> 'err');
        ELSIF EXISTS (SELECT 1 FROM webhooks.capture_health h
                       WHERE h.target = coalesce(nullif(TG_ARGV[18], '')::oid, TG_RELID)
                         AND h.last_failed_at > coalesce(h.last_ok_at, '-infinity')) THEN
            PERFORM webhooks.capture_recovered(coalesce(nullif(TG_ARGV[18], '')::oid, TG_RELID));
        END IF;
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

-- Does a column of this table have a type whose cast to json a user
-- defined (through domains, arrays and composite types)? to_jsonb() calls
-- such a cast: code of the type's owner, which capture then runs only in
-- webhooks.capture_shape(), never as webhooks_capture.
CREATE OR REPLACE FUNCTION webhooks.json_cast_ok(target regclass) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE t(oid) AS (
        SELECT a.atttypid FROM pg_attribute a WHERE a.attrelid = target AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT x.next FROM t JOIN pg_type y ON y.oid = t.oid
         CROSS JOIN LATERAL (SELECT y.typbasetype WHERE y.typtype = 'd'
                             UNION ALL SELECT y.typelem WHERE y.typelem <> 0 AND y.typsubscript = 'array_subscript_handler'::regproc
                             UNION ALL SELECT a.atttypid FROM pg_attribute a
                                        WHERE y.typtype = 'c' AND a.attrelid = y.typrelid AND a.attnum > 0 AND NOT a.attisdropped) x(next)
    )
    SELECT NOT EXISTS (SELECT 1 FROM t JOIN pg_cast c ON c.castsource = t.oid
                        WHERE t.oid >= 16384 AND c.casttarget IN ('json'::regtype, 'jsonb'::regtype))
$$;

-- A watched table's capture failed to shape `n` rows (capture(), as
-- webhooks_capture) or an ALTER TABLE broke one of its options
-- (webhooks.on_ddl): counted in webhooks.capture_health, and told as one
-- webhooks.capture.failed operational event per table per minute at most
-- (the failures since the last one). Only a writer that takes the table's
-- advisory lock without waiting records it, so concurrent writers never
-- queue here; the count is then a lower bound.
CREATE OR REPLACE FUNCTION webhooks.capture_fault(target oid, n bigint, error text, now timestamptz DEFAULT clock_timestamp())
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    h webhooks.capture_health;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1751477099, (target::bigint - 2147483648)::integer) THEN
        RETURN;
    END IF;
    INSERT INTO webhooks.capture_health AS c (target, failures, last_error, last_failed_at, unreported)
    VALUES (capture_fault.target, n, left(error, 1000), now, n)
    ON CONFLICT ON CONSTRAINT capture_health_pkey DO UPDATE
       SET failures = c.failures + excluded.failures, last_error = excluded.last_error,
           last_failed_at = excluded.last_failed_at, unreported = c.unreported + excluded.unreported
    RETURNING * INTO h;
    IF h.reported_at IS NULL OR h.reported_at <= now - interval '1 minute' THEN
        UPDATE webhooks.capture_health c SET reported_at = now, unreported = 0 WHERE c.target = capture_fault.target;
        INSERT INTO webhooks.events (event_type, origin, source_table, payload)
        SELECT 'webhooks.capture.failed', 'webhooks/capture', cl.oid::regclass::text,
               jsonb_build_object('table', cl.oid::regclass::text, 'error', h.last_error,
                                  'failures', h.unreported, 'failuresTotal', h.failures)
          FROM pg_class cl WHERE cl.oid = capture_fault.target;
        IF webhooks.someone_idle() THEN
            PERFORM pg_notify('webhooks', '');
        END IF;
    END IF;
END
$$;

-- A shaped table's statement was captured whole: if the table was
-- degraded, it is not any more (one index probe when it was not).
CREATE OR REPLACE FUNCTION webhooks.capture_recovered(target oid, now timestamptz DEFAULT clock_timestamp())
RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks.capture_health c
                WHERE c.target = capture_recovered.target AND c.last_failed_at > coalesce(c.last_ok_at, '-infinity'))
       AND pg_try_advisory_xact_lock(1751477099, (target::bigint - 2147483648)::integer) THEN
        UPDATE webhooks.capture_health c SET last_ok_at = now WHERE c.target = capture_recovered.target;
    END IF;
END
$$;

-- Before V15, resend shaped a row with webhooks_capture's rights; it now
-- takes the table owner's (sql/60_replay.sql).
DROP FUNCTION IF EXISTS webhooks.row_payload(anyelement);
DROP FUNCTION IF EXISTS webhooks.row_payload(oid, anyelement);

-- Ownership and EXECUTE: capture code belongs to the role that can do
-- nothing else; migrate is a member of it, so it can still replace them.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY['webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure,
                             'webhooks.capture_shape()'::regprocedure,
                             'webhooks.capture_fault(oid, bigint, text, timestamptz)'::regprocedure,
                             'webhooks.capture_recovered(oid, timestamptz)'::regprocedure] LOOP
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
GRANT SELECT, INSERT, UPDATE ON webhooks.capture_health TO webhooks_capture;
REVOKE ALL ON FUNCTION webhooks.capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.plain_capture() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.capture_shape() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.capture_fault(oid, bigint, text, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.capture_recovered(oid, timestamptz) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.emit(text, jsonb, text, text, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.emit_many(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.wake() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.origin_verified(text) FROM PUBLIC;
-- Only watch() creates capture triggers (through webhooks.capture_install,
-- below): a trigger written by hand can neither call capture with options
-- watch() would refuse nor break anyone's ALTER TABLE (audit N3). Before
-- V15 webhooks_app could.
REVOKE EXECUTE ON FUNCTION webhooks.capture(), webhooks.plain_capture() FROM webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.emit(text, jsonb, text, text, text, jsonb) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.emit_many(jsonb) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.wake() TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.origin_verified(text) TO webhooks_capture, webhooks_app;

-- Before V15 watch() granted webhooks_capture EXECUTE on every payload
-- function and USAGE on its schema, so one owner's capture could call
-- another's (audit N1). No owner's code runs as webhooks_capture now: take
-- those grants back (a superuser migrate can; otherwise each owner can).
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT format('REVOKE EXECUTE ON FUNCTION %s FROM webhooks_capture', p.oid::regprocedure) AS q
               FROM pg_proc p
              WHERE p.pronamespace <> 'webhooks'::regnamespace
                AND EXISTS (SELECT 1 FROM aclexplode(p.proacl) x WHERE x.grantee = 'webhooks_capture'::regrole)
             UNION ALL
             SELECT format('REVOKE USAGE ON SCHEMA %I FROM webhooks_capture', n.nspname)
               FROM pg_namespace n
              WHERE n.nspname <> 'webhooks'
                AND EXISTS (SELECT 1 FROM aclexplode(n.nspacl) x WHERE x.grantee = 'webhooks_capture'::regrole) LOOP
        BEGIN
            EXECUTE r.q;
        EXCEPTION WHEN OTHERS THEN
            NULL;
        END;
    END LOOP;
END
$$;

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
-- themselves, so it can never disagree with what runs. Only a watched
-- table's own triggers count: not a partition's (they carry the root's oid
-- in argument 18, V15), not the clones Postgres makes of a partitioned
-- table's row triggers (tgparentid), not a trigger whose options are not
-- JSON. And how its capture is doing (webhooks.capture_health, V15):
-- degraded while its last failure to shape an event, or the last option an
-- ALTER TABLE broke, is newer than its last success.
CREATE OR REPLACE FUNCTION webhooks.try_jsonb(t text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN t::jsonb;
EXCEPTION WHEN OTHERS THEN
    RETURN NULL;
END
$$;

CREATE OR REPLACE VIEW webhooks.watched AS
SELECT DISTINCT ON (t.tgrelid) t.tgrelid::regclass AS target, a[1] AS entity, webhooks.try_jsonb(a[2]) AS options,
       webhooks.try_jsonb(a[3]) AS attnums,
       coalesce(h.last_failed_at > coalesce(h.last_ok_at, '-infinity'), false) AS degraded,
       h.last_error, coalesce(h.failures, 0) AS failures, h.last_failed_at
  FROM pg_trigger t CROSS JOIN LATERAL webhooks.trigger_args(t.tgargs) a
  LEFT JOIN webhooks.capture_health h ON h.target = t.tgrelid
 WHERE t.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure)
   AND t.tgparentid = 0
   AND (a[19] IS NULL OR a[19] = t.tgrelid::oid::text)
   AND jsonb_typeof(webhooks.try_jsonb(a[2])) = 'object'
 ORDER BY t.tgrelid, t.oid;

-- The tables that share a watched table's capture: a partitioned table's
-- partitions at every level (writes that name one fire only its own
-- statement triggers); none for any other table.
CREATE OR REPLACE FUNCTION webhooks.capture_members(target regclass) RETURNS SETOF regclass
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT p.relid FROM pg_partition_tree(target) p WHERE p.relid <> target ORDER BY p.level, p.relid::oid
$$;

-- A table's capture triggers (internal): ours by function, whatever their
-- names, and those of pgwebhooks versions that generated code; on its
-- partitions too, and on tables that were its partitions (detached: their
-- triggers still name it). Never a clone of a partitioned table's row
-- trigger (it goes with its parent's).
CREATE OR REPLACE FUNCTION webhooks.capture_triggers(target regclass)
RETURNS TABLE (rel regclass, tgname text, fn regprocedure, args text[], enabled "char")
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT g.tgrelid::regclass, g.tgname::text, g.tgfoid::regprocedure, webhooks.trigger_args(g.tgargs), g.tgenabled
      FROM pg_trigger g
     WHERE NOT g.tgisinternal AND g.tgparentid = 0
       AND (g.tgrelid = target OR g.tgrelid IN (SELECT webhooks.capture_members(target)))
       AND (g.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure,
                         'webhooks.capture_shape()'::regprocedure)
            OR g.tgname IN ('webhooks_capture_insert', 'webhooks_capture_update', 'webhooks_capture_delete'))
    UNION
    SELECT g.tgrelid::regclass, g.tgname::text, g.tgfoid::regprocedure, webhooks.trigger_args(g.tgargs), g.tgenabled
      FROM pg_trigger g
     WHERE g.tgparentid = 0 AND g.tgrelid <> target
       AND g.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure,
                        'webhooks.capture_shape()'::regprocedure)
       AND (webhooks.trigger_args(g.tgargs))[CASE WHEN g.tgfoid = 'webhooks.capture_shape()'::regprocedure THEN 2 ELSE 19 END]
           = target::oid::text
$$;

-- Drop a table's capture triggers (internal; webhooks.capture_triggers).
CREATE OR REPLACE FUNCTION webhooks.unwatch_triggers(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT c.tgname, c.rel FROM webhooks.capture_triggers(target) c LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', t.tgname, t.rel);
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

-- The payload function an option names: f(<the table's row>) RETURNS jsonb.
CREATE OR REPLACE FUNCTION webhooks.watch_payload_fn(target regclass, payload text) RETURNS regprocedure
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rowtype text := format_type((SELECT c.reltype FROM pg_class c WHERE c.oid = target), NULL);
    pfn     regprocedure;
    fnrow   record;
BEGIN
    IF payload IS NULL OR payload = '' THEN
        RAISE EXCEPTION 'webhooks.watch: "payload" must name a function, e.g. "app.order_payload"'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    pfn := to_regprocedure(CASE WHEN strpos(payload, '(') > 0 THEN payload ELSE format('%s(%s)', payload, rowtype) END);
    IF pfn IS NULL THEN
        RAISE EXCEPTION 'webhooks.watch: "payload" names %, but there is no function %(%)', payload, payload, rowtype
            USING ERRCODE = 'undefined_function',
                  HINT = format('A payload function takes the table''s row: CREATE FUNCTION %s(r %s) RETURNS jsonb ...', payload, rowtype);
    END IF;
    SELECT p.pronargs, p.proargtypes[0] AS arg, p.prorettype, p.proretset, p.prokind INTO fnrow FROM pg_proc p WHERE p.oid = pfn;
    IF fnrow.pronargs <> 1 OR fnrow.arg <> (SELECT c.reltype FROM pg_class c WHERE c.oid = target) THEN
        RAISE EXCEPTION 'webhooks.watch: payload function % must take exactly one argument, a row of %', pfn, target
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF fnrow.prorettype <> 'jsonb'::regtype OR fnrow.proretset OR fnrow.prokind <> 'f' THEN
        RAISE EXCEPTION 'webhooks.watch: payload function % must return jsonb (one value, not a set)', pfn
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN pfn;
END
$$;

-- The capture triggers a table's watch() options mean (internal): each
-- trigger's table, name, function, arguments and CREATE TRIGGER statement,
-- after validating the options. watch() compares them with the triggers
-- the table has, so that watching again with the same options (as the DDL
-- hook does after every ALTER TABLE) changes nothing, not even a trigger a
-- user enabled ALWAYS for logical replication.
CREATE OR REPLACE FUNCTION webhooks.capture_plan(target regclass, entity text, options jsonb)
RETURNS TABLE (rel regclass, tgname text, fn regprocedure, args text[], ddl text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    r        record;
    opts     jsonb;
    ops      text[];
    pk       text[];
    nums     jsonb;
    a_cap    text[];
    a_shape  text[];
    names    jsonb;
    pfn      regprocedure;
    fast     boolean;
    shaped   boolean;
    per_row  boolean;
    ins_del  text;
    args_sql text;
    shape    text;
    m        regclass;
    ins_ref  text := 'REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT';
    del_ref  text := 'REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT';
BEGIN
    SELECT c.relkind, c.relnamespace, c.relispartition INTO r FROM pg_class c WHERE c.oid = target;
    IF r.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'webhooks.watch: % is not a table', target USING ERRCODE = 'wrong_object_type';
    END IF;
    IF r.relnamespace = 'webhooks'::regnamespace THEN
        RAISE EXCEPTION 'webhooks.watch: % belongs to pgwebhooks itself', target USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF r.relispartition THEN
        RAISE EXCEPTION 'webhooks.watch: % is a partition of %: watch that table (writes straight into any of its partitions are captured as its own)',
                        target, pg_partition_root(target)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
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
    IF opts ? 'payload' THEN
        pfn := webhooks.watch_payload_fn(target, opts->>'payload');
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

    -- Shaped: the table's owner has code in its capture (a payload
    -- function, a cast to json), which only capture_shape() runs.
    shaped := pfn IS NOT NULL OR NOT webhooks.json_cast_ok(target);
    -- The fast path: one key column, nothing excluded, no tenant column, no
    -- payload function. Its inserts and deletes take plain_capture() when
    -- every column's type is built in (it runs without SET clauses, see
    -- there), and run per row with "per_row".
    fast := cardinality(pk) = 1 AND NOT shaped AND NOT opts ? 'tenant_column'
            AND jsonb_array_length(coalesce(opts->'exclude', '[]')) = 0;
    ins_del := CASE WHEN fast AND webhooks.plain_capture_ok(target) THEN 'webhooks.plain_capture' ELSE 'webhooks.capture' END;
    per_row := coalesce((opts->>'per_row')::boolean, false);
    IF per_row AND r.relkind = 'p' THEN
        RAISE EXCEPTION 'webhooks.watch: "per_row" is for tables that are not partitioned; % is captured per statement on each of its partitions', target
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Postgres copies row triggers onto every new partition as the role that creates it, which may not call capture''s functions: leave "per_row" out.';
    END IF;
    IF per_row THEN
        IF NOT fast THEN
            RAISE EXCEPTION 'webhooks.watch: "per_row" needs a table with a one-column primary key, no "exclude", "tenant_column" or "payload", and no column type with a cast to json of its own'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        ins_ref := 'FOR EACH ROW';
        del_ref := 'FOR EACH ROW';
    END IF;

    -- Every argument is a quoted literal: nothing here becomes code.
    a_cap := ARRAY[
        entity, opts::text, nums::text,
        coalesce(names->>'insert', entity || '.created'),
        coalesce(names->>'update', entity || '.updated'),
        coalesce(names->>'delete', entity || '.deleted'),
        coalesce(names->>'status', ''),
        coalesce(opts->>'tenant_column', ''),
        ARRAY(SELECT jsonb_array_elements_text(coalesce(opts->'exclude', '[]')))::text,
        coalesce(pk, '{}')::text,
        coalesce(opts->>'status_column', ''),
        CASE WHEN opts ? 'columns' THEN ARRAY(SELECT jsonb_array_elements_text(opts->'columns'))::text ELSE '' END,
        coalesce(names->>'truncate', entity || '.truncated'),
        coalesce(pfn::oid::text, ''),
        target::text,
        CASE WHEN fast THEN 's' ELSE '' END,
        coalesce(pk[1], ''),
        CASE WHEN shaped THEN 'y' ELSE '' END,
        target::oid::text];
    a_shape := ARRAY[
        coalesce(pfn::oid::text, ''), target::oid::text, coalesce(opts->>'on_error', 'open'), coalesce(pk, '{}')::text,
        CASE WHEN webhooks.json_cast_ok(target) THEN '' ELSE 'c' END,
        pg_get_userbyid((SELECT c.relowner FROM pg_class c WHERE c.oid = target))];
    args_sql := (SELECT string_agg(quote_literal(x), ', ' ORDER BY o) FROM unnest(a_cap) WITH ORDINALITY u(x, o));
    shape := (SELECT string_agg(quote_literal(x), ', ' ORDER BY o) FROM unnest(a_shape) WITH ORDINALITY u(x, o));

    -- The table, then every partition (not truncate: truncating the parent
    -- fires its partitions' truncate triggers too). per_row is refused on a
    -- partitioned table, so a partition's triggers are statement-level.
    FOR m IN SELECT target UNION ALL SELECT webhooks.capture_members(target) LOOP
        rel := m;
        IF 'insert' = ANY (ops) THEN
            IF shaped THEN
                tgname := 'webhooks_capture_a_shape_insert'; fn := 'webhooks.capture_shape()'; args := a_shape;
                ddl := format('CREATE TRIGGER %I AFTER INSERT ON %s %s EXECUTE FUNCTION webhooks.capture_shape(%s)',
                              tgname, m, ins_ref, shape);
                RETURN NEXT;
            END IF;
            tgname := 'webhooks_capture_insert'; fn := (ins_del || '()')::regprocedure; args := a_cap;
            ddl := format('CREATE TRIGGER %I AFTER INSERT ON %s %s EXECUTE FUNCTION %s(%s)', tgname, m, ins_ref, ins_del, args_sql);
            RETURN NEXT;
        END IF;
        IF 'update' = ANY (ops) THEN
            IF shaped THEN
                tgname := 'webhooks_capture_a_shape_update'; fn := 'webhooks.capture_shape()'; args := a_shape;
                ddl := format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                              'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture_shape(%s)', tgname, m, shape);
                RETURN NEXT;
            END IF;
            tgname := 'webhooks_capture_update'; fn := 'webhooks.capture()'; args := a_cap;
            ddl := format('CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                          'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture(%s)', tgname, m, args_sql);
            RETURN NEXT;
        END IF;
        IF 'delete' = ANY (ops) THEN
            IF shaped THEN
                tgname := 'webhooks_capture_a_shape_delete'; fn := 'webhooks.capture_shape()'; args := a_shape;
                ddl := format('CREATE TRIGGER %I AFTER DELETE ON %s %s EXECUTE FUNCTION webhooks.capture_shape(%s)',
                              tgname, m, del_ref, shape);
                RETURN NEXT;
            END IF;
            tgname := 'webhooks_capture_delete'; fn := (ins_del || '()')::regprocedure; args := a_cap;
            ddl := format('CREATE TRIGGER %I AFTER DELETE ON %s %s EXECUTE FUNCTION %s(%s)', tgname, m, del_ref, ins_del, args_sql);
            RETURN NEXT;
        END IF;
        IF 'truncate' = ANY (ops) AND m = target THEN
            tgname := 'webhooks_capture_truncate'; fn := 'webhooks.capture()'; args := a_cap;
            ddl := format('CREATE TRIGGER %I AFTER TRUNCATE ON %s FOR EACH STATEMENT EXECUTE FUNCTION webhooks.capture(%s)',
                          tgname, m, args_sql);
            RETURN NEXT;
        END IF;
    END LOOP;
END
$$;

-- Create a watched table's capture triggers as capture_plan() says (internal,
-- called by watch() after it has checked its caller and dropped the old
-- triggers). SECURITY DEFINER as webhooks_capture, the one role that may
-- EXECUTE the capture functions (and so name them in CREATE TRIGGER): a
-- trigger that calls them is one this function made, from options
-- capture_plan() validated, never one a table's owner wrote by hand. It can
-- only act on a table whose owner granted it TRIGGER (watch() does, for
-- this transaction only): calling it directly gets exactly what watch() does.
CREATE OR REPLACE FUNCTION webhooks.capture_install(target regclass, entity text, options jsonb) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    p record;
BEGIN
    FOR p IN SELECT * FROM webhooks.capture_plan(target, entity, options) LOOP
        EXECUTE p.ddl;
    END LOOP;
END
$$;

-- The table's owner watched it again (watch(), not the DDL hook or
-- rewatch()): whatever was degraded is to be seen again.
CREATE OR REPLACE FUNCTION webhooks.capture_acknowledged(target regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_has_role(session_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = target), 'USAGE') THEN
        UPDATE webhooks.capture_health h SET last_ok_at = clock_timestamp()
         WHERE h.target = capture_acknowledged.target AND h.last_failed_at > coalesce(h.last_ok_at, '-infinity');
    END IF;
END
$$;

-- Attach capture to a table. Calling it again replaces the options. Runs
-- with the caller's rights: the table's owner (which needs the role
-- webhooks_app) or a superuser. It checks its caller, drops the old
-- triggers (an owner's right), lets webhooks.capture_install() create the
-- new ones for this transaction only (TRIGGER on the table and its
-- partitions, USAGE on their schemas where webhooks_capture lacks it), and
-- takes that back.
CREATE OR REPLACE FUNCTION webhooks.watch_apply(target regclass, entity text, options jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    rel      record;
    opts     jsonb;
    pfn      regprocedure;
    fnowner  oid;
    m        regclass;
    granted  text[] := '{}';
    kept     text[];
    g        text;
BEGIN
    SELECT c.relkind, c.relnamespace, c.relispartition INTO rel FROM pg_class c WHERE c.oid = target;
    IF rel.relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'webhooks.watch: % is not a table', target USING ERRCODE = 'wrong_object_type';
    END IF;
    IF rel.relnamespace = 'webhooks'::regnamespace THEN
        RAISE EXCEPTION 'webhooks.watch: % belongs to pgwebhooks itself', target USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM webhooks.watch_check_owner(target, 'watch');
    opts := webhooks.watch_options(target, entity, options);

    -- The payload function: owned by the caller (or a role it belongs to),
    -- so that capture calls only code the table's owner already controls;
    -- capture runs it with the table owner's rights (capture_shape()).
    IF opts ? 'payload' THEN
        IF jsonb_typeof(opts->'payload') <> 'string' THEN
            RAISE EXCEPTION 'webhooks.watch: "payload" must name a function, e.g. "app.order_payload"'
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        pfn := webhooks.watch_payload_fn(target, opts->>'payload');
        SELECT p.proowner INTO fnowner FROM pg_proc p WHERE p.oid = pfn;
        IF NOT pg_has_role(current_user, fnowner, 'USAGE') THEN
            RAISE EXCEPTION 'webhooks.watch: payload function % belongs to role %; only its owner may make capture call it',
                            pfn, fnowner::regrole
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        opts := jsonb_set(opts, '{payload}', to_jsonb(pfn::text));
    END IF;

    -- Nothing to change (the same options over the same columns, as after
    -- most ALTER TABLEs): the triggers stay as they are, enabled or not.
    IF NOT EXISTS (SELECT p.rel, p.tgname, p.fn, p.args FROM webhooks.capture_plan(target, entity, opts) p
                   EXCEPT SELECT c.rel, c.tgname, c.fn, c.args FROM webhooks.capture_triggers(target) c)
       AND NOT EXISTS (SELECT c.rel, c.tgname, c.fn, c.args FROM webhooks.capture_triggers(target) c
                       EXCEPT SELECT p.rel, p.tgname, p.fn, p.args FROM webhooks.capture_plan(target, entity, opts) p) THEN
        RETURN;
    END IF;
    -- Triggers a user set to fire ALWAYS, on REPLICA only, or not at all
    -- keep that setting (the DDL hook then finds nothing to change).
    kept := ARRAY(SELECT format('ALTER TABLE %s %s TRIGGER %I', c.rel,
                                CASE c.enabled WHEN 'D' THEN 'DISABLE' WHEN 'A' THEN 'ENABLE ALWAYS' ELSE 'ENABLE REPLICA' END,
                                c.tgname)
                    FROM webhooks.capture_triggers(target) c WHERE c.enabled <> 'O');
    PERFORM webhooks.unwatch_triggers(target);
    FOR m IN SELECT target UNION ALL SELECT webhooks.capture_members(target) LOOP
        IF NOT has_table_privilege('webhooks_capture', m, 'TRIGGER') THEN
            EXECUTE format('GRANT TRIGGER ON %s TO webhooks_capture', m);
            granted := granted || format('TRIGGER ON %s', m);
        END IF;
    END LOOP;
    FOR g IN SELECT DISTINCT c.relnamespace::regnamespace::text FROM pg_class c
              WHERE c.oid = target OR c.oid IN (SELECT webhooks.capture_members(target)) LOOP
        IF NOT has_schema_privilege('webhooks_capture', g, 'USAGE') THEN
            BEGIN
                EXECUTE format('GRANT USAGE ON SCHEMA %s TO webhooks_capture', g);
            EXCEPTION WHEN insufficient_privilege THEN
                RAISE EXCEPTION 'webhooks.watch: % cannot let capture find tables in schema % while it installs their triggers', current_user, g
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = format('Have the schema''s owner run: GRANT USAGE ON SCHEMA %s TO webhooks_capture; (it finds names: it reads nothing)', g);
            END;
            granted := granted || format('USAGE ON SCHEMA %s', g);
        END IF;
    END LOOP;
    PERFORM webhooks.capture_install(target, entity, opts);
    FOREACH g IN ARRAY granted LOOP
        EXECUTE format('REVOKE %s FROM webhooks_capture', g);
    END LOOP;
    FOREACH g IN ARRAY kept LOOP
        BEGIN
            EXECUTE g;
        EXCEPTION WHEN undefined_object THEN
            NULL;   -- that trigger is not part of the new options
        END;
    END LOOP;
END
$$;

-- watch(): webhooks.watch_apply(), and the owner's acknowledgement that
-- clears a degraded state (the DDL hook and rewatch() apply only).
CREATE OR REPLACE FUNCTION webhooks.watch(target regclass, entity text, options jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM webhooks.watch_apply(target, entity, options);
    PERFORM webhooks.capture_acknowledged(target);
END
$$;

-- Stop capturing a table. Events already written stay in the outbox.
CREATE OR REPLACE FUNCTION webhooks.unwatch(target regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    was boolean;
BEGIN
    PERFORM webhooks.watch_check_owner(target, 'unwatch');
    was := EXISTS (SELECT 1 FROM webhooks.watched w WHERE w.target = unwatch.target);
    PERFORM webhooks.unwatch_triggers(target);
    RETURN was;
END
$$;

-- What a DDL broke in a watched table's options: a status, tenant or
-- columns entry whose column is gone, a payload function that is gone or
-- (LANGUAGE sql) names what is gone.
-- (An excluded column that is gone breaks nothing.) One line each.
CREATE OR REPLACE FUNCTION webhooks.watch_drift(target regclass) RETURNS text[]
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w   record;
    k   text;
    fn  oid;
    out text[] := '{}';
BEGIN
    SELECT * INTO w FROM webhooks.watched x WHERE x.target = watch_drift.target;
    IF NOT FOUND THEN
        RETURN out;
    END IF;
    FOREACH k IN ARRAY ARRAY['status_column', 'tenant_column'] LOOP
        IF w.options ? k AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = target AND NOT a.attisdropped
                                                                       AND a.attnum = (w.attnums->>k)::smallint) THEN
            out := out || format('"%s" named column "%s", which is gone: %s', k, w.options->>k,
                                 CASE k WHEN 'status_column' THEN 'updates are <entity>.updated now'
                                        ELSE 'events have no tenant now' END);
        END IF;
    END LOOP;
    IF w.options ? 'columns' AND NOT EXISTS (
           SELECT 1 FROM pg_attribute a WHERE a.attrelid = target AND NOT a.attisdropped
              AND a.attnum IN (SELECT jsonb_array_elements_text(coalesce(w.attnums->'columns', '[]'))::smallint)) THEN
        out := out || format('every column "columns" named (%s) is gone: any change emits now', w.options->'columns');
    END IF;
    IF w.attnums ? 'payload' AND NOT EXISTS (SELECT 1 FROM pg_proc p WHERE p.oid = (w.attnums->>'payload')::oid)
       AND to_regprocedure(w.options->>'payload') IS NULL THEN
        out := out || format('payload function %s is gone: events carry the row''s own JSON now', w.options->>'payload');
    END IF;
    -- A LANGUAGE sql payload function that names a column the change took
    -- away: its body is parsed and analysed again by Postgres's own
    -- validator (as at CREATE FUNCTION), which runs none of its code.
    -- With the function's own settings (its SET clauses), else the
    -- session's default search_path (what a writer would have); only
    -- "does not exist"-like errors (class 42) count; the settings are
    -- rolled back with the block.
    FOR fn IN SELECT p.oid FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang
               WHERE p.oid = (w.attnums->>'payload')::oid AND l.lanname = 'sql' LOOP
        BEGIN
            PERFORM set_config('search_path', (SELECT s.reset_val FROM pg_settings s WHERE s.name = 'search_path'), true);
            PERFORM set_config(split_part(c, '=', 1), substr(c, strpos(c, '=') + 1), true)
               FROM pg_proc p CROSS JOIN LATERAL unnest(p.proconfig) c WHERE p.oid = fn;
            PERFORM set_config('check_function_bodies', 'on', true);
            PERFORM fmgr_sql_validator(fn);
            RAISE EXCEPTION USING ERRCODE = 'WH000';
        EXCEPTION
            WHEN SQLSTATE 'WH000' THEN
                NULL;
            WHEN OTHERS THEN
                IF left(SQLSTATE, 2) = '42' THEN
                    out := out || format('payload function %s no longer fits the table (%s): those rows are captured as their own JSON, marked',
                                         fn::regprocedure, SQLERRM);
                END IF;
        END;
    END LOOP;
    RETURN out;
END
$$;

-- A watched table's options with the names its columns have now (found by
-- attribute number): renamed columns keep their role; an excluded column
-- stays excluded under its old name too (fail closed). What a change broke
-- (webhooks.watch_drift) is left out, so that capture keeps working: a
-- status or tenant column that is gone, a "columns" list with nothing
-- left, a payload function that is gone (one created again under its name
-- is found by that name).
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
            opts := opts - 'columns';
        END IF;
    END IF;
    IF opts ? 'payload' AND w.attnums ? 'payload' THEN
        col := coalesce((SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.oid = (w.attnums->>'payload')::oid),
                        to_regprocedure(opts->>'payload')::text);
        opts := CASE WHEN col IS NULL THEN opts - 'payload' ELSE jsonb_set(opts, '{payload}', to_jsonb(col)) END;
    END IF;
    FOREACH k IN ARRAY ARRAY['status_column', 'tenant_column'] LOOP
        IF opts ? k THEN
            SELECT a.attname::text INTO col FROM pg_attribute a
             WHERE a.attrelid = target AND NOT a.attisdropped AND a.attnum = (w.attnums->>k)::smallint;
            opts := CASE WHEN col IS NULL THEN opts - k ELSE jsonb_set(opts, ARRAY[k], to_jsonb(col)) END;
        END IF;
    END LOOP;
    IF NOT opts ? 'status_column' AND opts ? 'names' THEN
        opts := jsonb_set(opts, '{names}', (opts->'names') - 'status');
    END IF;
    RETURN opts;
END
$$;

-- Refresh the capture of the watched tables the caller owns (all of them
-- for a superuser) after their columns changed, where no event trigger does
-- it (migrate run without a superuser). What a change broke is said as a
-- WARNING (webhooks.watch_drift).
CREATE OR REPLACE FUNCTION webhooks.rewatch() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w record;
    d text;
    n integer := 0;
BEGIN
    FOR w IN SELECT x.target, x.entity FROM webhooks.watched x JOIN pg_class c ON c.oid = x.target
              WHERE pg_has_role(current_user, c.relowner, 'USAGE') ORDER BY x.target::oid LOOP
        FOREACH d IN ARRAY webhooks.watch_drift(w.target) LOOP
            RAISE WARNING 'webhooks: capture of %: %', w.target, d
                USING HINT = 'Call webhooks.watch() with options that name what the table has now.';
        END LOOP;
        PERFORM webhooks.watch_apply(w.target, w.entity, webhooks.watch_options_now(w.target));
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- After DDL on a watched table (ALTER TABLE, but also ALTER VIEW ... RENAME
-- COLUMN and ALTER INDEX ... RENAME, which Postgres accepts on a table) or
-- on one of its partitions, or a partition created or attached (or
-- detached), refresh its capture from the stored options by attribute
-- number. What the change broke is said as a WARNING and shown as degraded
-- (webhooks.watch_drift); the DDL itself never fails because of capture:
-- an error refreshing one table is a WARNING, and that table keeps the
-- capture it had. Only the commands above are looked at, which watch()
-- itself never issues (it creates and drops triggers and grants), so no
-- setting is needed against recursion (before V15 a session could set one
-- to skip this, audit L7). Every other DDL returns at once, having read
-- nothing but the catalog: a role with no rights on schema webhooks alters
-- and drops its tables as before. SECURITY DEFINER (owned by the superuser
-- who installed the event trigger) so that a table's owner needs no grant
-- either; what it runs is only watch(), which builds no code from names.
CREATE OR REPLACE FUNCTION webhooks.on_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    t     oid;
    tag   text;
    d     text;
    drift text[];
BEGIN
    FOR t, tag IN
        SELECT DISTINCT r.root, c.command_tag FROM pg_event_trigger_ddl_commands() c
         CROSS JOIN LATERAL (SELECT c.objid UNION SELECT pg_partition_root(c.objid)::oid) r(root)
         WHERE c.classid = 'pg_class'::regclass
           AND c.command_tag IN ('ALTER TABLE', 'CREATE TABLE', 'ALTER INDEX', 'ALTER VIEW')
           AND r.root IS NOT NULL
           AND EXISTS (SELECT 1 FROM pg_trigger g
                        WHERE g.tgrelid = r.root AND g.tgparentid = 0
                          AND g.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure))
    LOOP
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM webhooks.watched w WHERE w.target = t::regclass);
        BEGIN
            drift := webhooks.watch_drift(t::regclass);
            PERFORM webhooks.watch_apply(t::regclass, w.entity, webhooks.watch_options_now(t::regclass))
               FROM webhooks.watched w WHERE w.target = t::regclass;
            FOREACH d IN ARRAY drift LOOP
                RAISE WARNING 'webhooks: % of % broke its capture: %', tag, t::regclass, d
                    USING HINT = 'Capture goes on; call webhooks.watch() with options that name what the table has now.';
            END LOOP;
            IF cardinality(drift) > 0 THEN
                PERFORM webhooks.capture_fault(t, 0, format('%s: %s', tag, array_to_string(drift, '; ')));
            END IF;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'webhooks: capture of % was not refreshed after %: %', t::regclass, tag, SQLERRM
                USING HINT = 'It keeps the capture it had; call webhooks.rewatch() as its owner to try again.';
            PERFORM webhooks.capture_fault(t, 0, format('%s: capture not refreshed: %s', tag, SQLERRM));
        END;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION webhooks.on_ddl() FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.capture_install(regclass, text, jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION webhooks.capture_acknowledged(regclass) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION webhooks.capture_acknowledged(regclass) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.watch_apply(regclass, text, jsonb) TO webhooks_app;
GRANT EXECUTE ON FUNCTION webhooks.capture_plan(regclass, text, jsonb) TO webhooks_app, webhooks_capture;
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOREACH f IN ARRAY ARRAY['webhooks.capture_install(regclass, text, jsonb)'::regprocedure,
                             'webhooks.capture_acknowledged(regclass)'::regprocedure] LOOP
        IF (SELECT proowner FROM pg_proc WHERE oid = f) <> 'webhooks_capture'::regrole THEN
            GRANT CREATE ON SCHEMA webhooks TO webhooks_capture;
            EXECUTE format('ALTER FUNCTION %s OWNER TO webhooks_capture', f);
            REVOKE CREATE ON SCHEMA webhooks FROM webhooks_capture;
        END IF;
    END LOOP;
END
$$;
GRANT EXECUTE ON FUNCTION webhooks.capture_install(regclass, text, jsonb) TO webhooks_app;
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
            PERFORM webhooks.watch_apply(w.target, w.entity, webhooks.watch_options_now(w.target));
        ELSE
            RAISE NOTICE 'pgwebhooks: % keeps its capture of before V10 until its owner runs SELECT webhooks.rewatch()', w.target;
        END IF;
    END LOOP;
END
$$;

-- From versions before V15, where a payload function ran inside capture()
-- as webhooks_capture and a partitioned table's partitions had no
-- triggers: shaped tables (a payload function, a cast to json of a user's)
-- and partitioned tables get their V15 triggers. Until then (their owner
-- runs SELECT webhooks.rewatch()), a shaped table's writes are captured as
-- the rows' own JSON, marked, and it shows as degraded.
DO $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT x.target, x.entity FROM webhooks.watched x JOIN pg_class c ON c.oid = x.target
              WHERE NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = x.target
                                   AND t.tgfoid IN ('webhooks.capture()'::regprocedure, 'webhooks.plain_capture()'::regprocedure)
                                   AND cardinality(webhooks.trigger_args(t.tgargs)) >= 19)
                AND (x.options ? 'payload' OR c.relkind = 'p' OR NOT webhooks.json_cast_ok(x.target))
              ORDER BY x.target::oid LOOP
        IF pg_has_role(current_user, (SELECT c.relowner FROM pg_class c WHERE c.oid = w.target), 'USAGE') THEN
            -- (per_row is refused on partitioned tables now)
            PERFORM webhooks.watch_apply(w.target, w.entity, webhooks.watch_options_now(w.target) - 'per_row');
        ELSE
            RAISE NOTICE 'pgwebhooks: % keeps its capture of before V15 until its owner runs SELECT webhooks.rewatch()', w.target;
        END IF;
    END LOOP;
END
$$;
