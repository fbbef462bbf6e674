-- Capture: how app writes become rows in webhooks.events.
--
-- Applied by `pgwebhooks migrate` after the migrations, every time (every
-- statement here is idempotent). Functions are SECURITY DEFINER with a fixed
-- search_path so the app's role needs no grant on schema webhooks.

-- Wake an idle sidecar. Listeners set webhooks.listeners.idle just before
-- they wait on LISTEN; while every listener is busy, writers skip the NOTIFY
-- (a NOTIFY takes a cluster-wide lock at commit and serialises committers).
-- The payload is constant so Postgres folds repeats within a transaction.
CREATE OR REPLACE FUNCTION webhooks.wake() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM webhooks.listeners WHERE idle) THEN
        PERFORM pg_notify('webhooks', '');
    END IF;
END
$$;

-- The origin of writes in this transaction: NULL for the app's own writes,
-- 'inbound/<route>' for writes made while applying a callback.
CREATE OR REPLACE FUNCTION webhooks.current_origin() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT nullif(current_setting('webhooks.origin', true), '')
$$;

-- Emit one event from the app's own code (a trigger, a procedure, a
-- statement). watch() is the fast path for whole tables; emit() is for
-- events that need joins or custom shapes.
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
    INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, previous)
    VALUES (event_type, tenant_id, webhooks.current_origin(), source_table, row_key, payload, previous)
    RETURNING event_id INTO id;
    PERFORM webhooks.wake();
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
        IF k NOT IN ('ops', 'status_column', 'columns', 'exclude', 'tenant_column', 'names') THEN
            RAISE EXCEPTION 'webhooks.watch: unknown option "%"', k USING ERRCODE = 'invalid_parameter_value',
                HINT = 'Options are ops, status_column, columns, exclude, tenant_column, names.';
        END IF;
    END LOOP;

    IF opts ? 'ops' THEN
        IF jsonb_typeof(opts->'ops') <> 'array' OR jsonb_array_length(opts->'ops') = 0
           OR EXISTS (SELECT 1 FROM jsonb_array_elements(opts->'ops') o
                      WHERE jsonb_typeof(o) <> 'string' OR o #>> '{}' NOT IN ('insert', 'update', 'delete')) THEN
            RAISE EXCEPTION 'webhooks.watch: "ops" must be a non-empty array of "insert", "update", "delete"'
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
            IF k NOT IN ('insert', 'update', 'delete', 'status') THEN
                RAISE EXCEPTION 'webhooks.watch: unknown key "%" in "names"', k USING ERRCODE = 'invalid_parameter_value',
                    HINT = 'Keys are insert, update, delete, status.';
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

-- Attach capture to a table. Calling it again replaces the options.
-- Generates one trigger function per operation, specialised to the table
-- (names, excluded columns, key columns baked in), run FOR EACH STATEMENT
-- over transition tables: a 10,000-row INSERT is one INSERT ... SELECT.
CREATE OR REPLACE FUNCTION webhooks.watch(target regclass, entity text, options jsonb DEFAULT '{}') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    opts     jsonb;
    ops      text[];
    relkind  "char";
    pk       text[];
    tbl      text := target::text;
    fn       text;
    key_expr text;
    key_join text;
    excl     text;
    tenant   text;
    origin   text := 'webhooks.current_origin()';
    wake     text := 'IF FOUND AND EXISTS (SELECT 1 FROM webhooks.listeners WHERE idle) THEN PERFORM pg_notify(''webhooks'', ''''); END IF;';
    evname   text;
    changed  text;
    body     text;
    op       text;
BEGIN
    SELECT c.relkind INTO relkind FROM pg_class c WHERE c.oid = target;
    IF relkind NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'webhooks.watch: % is not a table', target USING ERRCODE = 'wrong_object_type';
    END IF;
    IF target::oid IN (SELECT c.oid FROM pg_class c WHERE c.relnamespace = 'webhooks'::regnamespace) THEN
        RAISE EXCEPTION 'webhooks.watch: % belongs to pgwebhooks itself', target USING ERRCODE = 'invalid_parameter_value';
    END IF;
    opts := webhooks.watch_options(target, entity, options);
    ops := CASE WHEN opts ? 'ops' THEN ARRAY(SELECT jsonb_array_elements_text(opts->'ops'))
                ELSE ARRAY['insert', 'update', 'delete'] END;

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

    -- Pieces shared by the generated functions; r is the row.
    key_expr := CASE
        WHEN pk IS NULL THEN 'NULL::text'
        WHEN cardinality(pk) = 1 THEN format('r.%I::text', pk[1])
        ELSE format('jsonb_build_array(%s)::text', (SELECT string_agg(format('r.%I', c), ', ') FROM unnest(pk) c))
    END;
    key_join := (SELECT string_agg(format('o.%I = r.%I', c, c), ' AND ') FROM unnest(pk) c);
    excl := CASE WHEN opts ? 'exclude' AND jsonb_array_length(opts->'exclude') > 0
                 THEN format(' - %L::text[]', ARRAY(SELECT jsonb_array_elements_text(opts->'exclude')))
                 ELSE '' END;
    tenant := CASE WHEN opts ? 'tenant_column' THEN format('j->>%L', opts->>'tenant_column') ELSE 'NULL::text' END;
    fn := 'capture_' || target::oid;

    PERFORM webhooks.unwatch_triggers(target);

    IF 'insert' = ANY (ops) THEN
        evname := coalesce(opts->'names'->>'insert', entity || '.created');
        body := format($f$
    INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload)
    SELECT %L, %s, %s, %L, k, j%s
      FROM (SELECT to_jsonb(r) AS j, %s AS k FROM new_rows r) s;
    %s$f$, evname, tenant, origin, tbl, excl, key_expr, wake);
        PERFORM webhooks.define_capture(fn || '_insert', body, tbl);
        EXECUTE format('CREATE TRIGGER webhooks_capture_insert AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.%I()', target, fn || '_insert');
    END IF;

    IF 'delete' = ANY (ops) THEN
        evname := coalesce(opts->'names'->>'delete', entity || '.deleted');
        body := format($f$
    INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload)
    SELECT %L, %s, %s, %L, k, j%s
      FROM (SELECT to_jsonb(r) AS j, %s AS k FROM old_rows r) s;
    %s$f$, evname, tenant, origin, tbl, excl, key_expr, wake);
        PERFORM webhooks.define_capture(fn || '_delete', body, tbl);
        EXECUTE format('CREATE TRIGGER webhooks_capture_delete AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.%I()', target, fn || '_delete');
    END IF;

    IF 'update' = ANY (ops) THEN
        -- Which changes emit: any column, or only the listed ones (a status
        -- change always emits when a status_column is set).
        changed := 'c IS NOT NULL';
        IF opts ? 'columns' THEN
            changed := format('c ?| %L::text[]', ARRAY(SELECT jsonb_array_elements_text(opts->'columns')));
            IF opts ? 'status_column' THEN
                changed := changed || format(' OR c ? %L', opts->>'status_column');
            END IF;
        END IF;
        evname := format('%L', coalesce(opts->'names'->>'update', entity || '.updated'));
        IF opts ? 'status_column' THEN
            evname := format('CASE WHEN c ? %1$L THEN %2$s ELSE %3$s END', opts->>'status_column',
                CASE WHEN opts->'names' ? 'status' THEN format('%L', opts->'names'->>'status')
                     ELSE format('coalesce(%L || lower(j->>%L), %s)', entity || '.', opts->>'status_column', evname) END,
                evname);
        END IF;
        body := format($f$
    INSERT INTO webhooks.events (event_type, tenant_id, origin, source_table, row_key, payload, previous)
    SELECT %s, %s, %s, %L, k, j%s, c%s
      FROM (SELECT n.j, n.k,
                   (SELECT jsonb_object_agg(e.key, e.value) FROM jsonb_each(n.oj) e
                     WHERE n.j -> e.key IS DISTINCT FROM e.value) AS c
              FROM (SELECT to_jsonb(r) AS j, to_jsonb(o) AS oj, %s AS k
                      FROM new_rows r JOIN old_rows o ON %s
                    OFFSET 0) n) s
     WHERE %s;
    %s$f$, evname, tenant, origin, tbl, excl, excl, key_expr, key_join, changed, wake);
        PERFORM webhooks.define_capture(fn || '_update', body, tbl);
        EXECUTE format('CREATE TRIGGER webhooks_capture_update AFTER UPDATE ON %s '
                       'REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
                       'FOR EACH STATEMENT EXECUTE FUNCTION webhooks.%I()', target, fn || '_update');
    END IF;

    INSERT INTO webhooks.watched AS w (target, entity, options)
    VALUES (target, entity, opts)
    ON CONFLICT ON CONSTRAINT watched_pkey DO UPDATE SET entity = excluded.entity, options = excluded.options, updated_at = now();
END
$$;

-- Create one generated capture function (internal to watch()).
CREATE OR REPLACE FUNCTION webhooks.define_capture(name text, body text, tbl text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $def$
BEGIN
    EXECUTE format($f$CREATE OR REPLACE FUNCTION webhooks.%I() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET jit = off AS $body$
-- Generated by webhooks.watch(%L); call watch() again to change it.
BEGIN%s
    RETURN NULL;
END
$body$$f$, name, tbl, body);
END
$def$;

-- Drop the capture triggers and their functions (internal).
CREATE OR REPLACE FUNCTION webhooks.unwatch_triggers(target regclass) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp SET client_min_messages = warning AS $$
DECLARE
    op text;
BEGIN
    FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        EXECUTE format('DROP TRIGGER IF EXISTS %I ON %s', 'webhooks_capture_' || op, target);
        EXECUTE format('DROP FUNCTION IF EXISTS webhooks.%I()', 'capture_' || target::oid || '_' || op);
    END LOOP;
END
$$;

-- Stop capturing a table. Events already written stay in the outbox.
CREATE OR REPLACE FUNCTION webhooks.unwatch(target regclass) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM webhooks.unwatch_triggers(target);
    DELETE FROM webhooks.watched w WHERE w.target = unwatch.target;
    RETURN FOUND;
END
$$;

-- Regenerate the capture of every watched table (run by `migrate`, so
-- watched tables always run the current version's generated code).
CREATE OR REPLACE FUNCTION webhooks.rewatch() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w record;
    n integer := 0;
BEGIN
    FOR w IN SELECT target, entity, options FROM webhooks.watched ORDER BY target::oid LOOP
        PERFORM webhooks.watch(w.target, w.entity, w.options);
        n := n + 1;
    END LOOP;
    RETURN n;
END
$$;

-- Keep capture right when a watched table changes shape. After any ALTER
-- TABLE of a watched table, its capture is regenerated from the stored
-- options; if the options now name a column that is gone (renamed or
-- dropped), watch() raises and the ALTER TABLE fails with that message
-- — capture never silently stops excluding a secret or emitting status
-- events. Call watch() with new options first, then alter.
CREATE OR REPLACE FUNCTION webhooks.on_alter_table() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    w record;
BEGIN
    FOR w IN SELECT DISTINCT x.target, x.entity, x.options
               FROM pg_event_trigger_ddl_commands() c
               JOIN webhooks.watched x ON x.target = c.objid
              WHERE c.classid = 'pg_class'::regclass LOOP
        PERFORM webhooks.watch(w.target, w.entity, w.options);
    END LOOP;
END
$$;

-- A dropped watched table: forget it and its generated functions.
CREATE OR REPLACE FUNCTION webhooks.on_drop_table() RETURNS event_trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    o  record;
    op text;
BEGIN
    FOR o IN SELECT d.objid FROM pg_event_trigger_dropped_objects() d WHERE d.object_type = 'table' LOOP
        DELETE FROM webhooks.watched w WHERE w.target::oid = o.objid;
        FOREACH op IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
            EXECUTE format('DROP FUNCTION IF EXISTS webhooks.%I()', 'capture_' || o.objid || '_' || op);
        END LOOP;
    END LOOP;
END
$$;

-- Event triggers need a superuser; without one, capture still works and
-- the docs say to call webhooks.rewatch() after altering a watched table.
DO $$
BEGIN
    DROP EVENT TRIGGER IF EXISTS webhooks_alter_table;
    CREATE EVENT TRIGGER webhooks_alter_table ON ddl_command_end WHEN TAG IN ('ALTER TABLE')
        EXECUTE FUNCTION webhooks.on_alter_table();
    DROP EVENT TRIGGER IF EXISTS webhooks_drop_table;
    CREATE EVENT TRIGGER webhooks_drop_table ON sql_drop WHEN TAG IN ('DROP TABLE')
        EXECUTE FUNCTION webhooks.on_drop_table();
EXCEPTION WHEN insufficient_privilege THEN
    RAISE NOTICE 'pgwebhooks: not a superuser, so no event triggers: after ALTER TABLE on a watched table, run SELECT webhooks.rewatch()';
END
$$;
