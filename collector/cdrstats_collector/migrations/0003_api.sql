-- CDR-Stats collector schema, version 3: API tokens, tenant isolation in the database
-- (row-level security) and the indexes CDR search needs.
--
-- Isolation model (docs/http-api.md, "Tenant isolation"):
-- * every API read runs in a transaction that does
--       SET LOCAL ROLE cdrstats_reader;
--       SELECT set_config('cdrstats.tenant_id', '<id>', true);
--   (cdrstats_collector.auth.tenant_connection). cdrstats_reader is a NOLOGIN role that owns
--   nothing and may only SELECT the tables below, through policies that compare tenant_id
--   with that setting. Without the setting no row is visible.
-- * FORCE ROW LEVEL SECURITY: the policies apply to the tables' owner as well (a superuser
--   still bypasses them). Ingest and administration run as the owner, which gets an explicit
--   policy `cdrstats_owner_all`; every other role sees nothing.
-- * the reader gets SELECT on the partitioned parents only, never on partitions (a partition
--   read directly would not apply the parent's policies).
-- Roles are cluster-wide: the role is created once if missing, and the migrating user is made
-- a member so that it may SET ROLE to it without being a superuser.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cdrstats_reader') THEN
        CREATE ROLE cdrstats_reader NOLOGIN NOINHERIT;
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_auth_members m
        JOIN pg_roles r ON r.oid = m.roleid
        JOIN pg_roles u ON u.oid = m.member
        WHERE r.rolname = 'cdrstats_reader' AND u.rolname = current_user
    ) AND NOT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('GRANT cdrstats_reader TO %I', current_user);
    END IF;
END
$$;

-- The tenant id of the current API transaction, NULL when unset (then nothing is visible).
CREATE FUNCTION cdrstats_current_tenant() RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT NULLIF(current_setting('cdrstats.tenant_id', true), '')::bigint
$$;

-- Bearer tokens for the HTTP API. Only the sha256 of a token is stored; the token is shown
-- once by `cdrstats api-token create`.
CREATE TABLE api_token (
    token_hash    bytea PRIMARY KEY CHECK (length(token_hash) = 32),
    user_id       bigint NOT NULL REFERENCES app_user (id) ON DELETE CASCADE,
    label         text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_token_user_idx ON api_token (user_id);

-- Row-level security on every table holding one tenant's data that the API reads.
-- (tables of migration 0002, the analytics aggregates, are added in the DO block below.)
GRANT USAGE ON SCHEMA public TO cdrstats_reader;
GRANT EXECUTE ON FUNCTION cdrstats_current_tenant() TO cdrstats_reader;

DO $$
DECLARE
    t record;
BEGIN
    FOR t IN
        SELECT c.relname, (c.relname = 'tenant') AS is_tenant
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = current_schema()
          AND c.relkind IN ('r', 'p')
          AND NOT c.relispartition
          AND (c.relname = 'tenant'
               OR EXISTS (SELECT 1 FROM pg_attribute a
                          WHERE a.attrelid = c.oid AND a.attname = 'tenant_id'
                            AND NOT a.attisdropped))
          AND c.relname NOT IN ('agent', 'agent_token', 'app_user', 'api_token')
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t.relname);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t.relname);
        EXECUTE format('CREATE POLICY cdrstats_owner_all ON %I TO %I USING (true) WITH CHECK (true)',
                       t.relname, current_user);
        EXECUTE format('CREATE POLICY cdrstats_tenant_read ON %I FOR SELECT TO cdrstats_reader'
                       ' USING (%I = cdrstats_current_tenant())',
                       t.relname, CASE WHEN t.is_tenant THEN 'id' ELSE 'tenant_id' END);
        EXECUTE format('GRANT SELECT ON %I TO cdrstats_reader', t.relname);
    END LOOP;
END
$$;

-- dial_prefix is shared by all tenants (names of destinations): readable, not writable.
GRANT SELECT ON dial_prefix TO cdrstats_reader;

-- CDR search (search.py): newest first over all switches of a tenant, keyset on
-- (start_time, key, switch_id). The primary key starts with switch_id, which a tenant-wide
-- search does not give.
CREATE INDEX cdr_tenant_start_idx ON cdr (tenant_id, start_time, key, switch_id);
-- Number look-ups, exact or by prefix (byte order: text_pattern_ops, whatever the collation).
-- start_time last: the calls of one exact number come out newest first, so a page reads
-- its 100 rows instead of sorting every call of the number.
-- "contains" and "ends with" are not indexed: they filter the time range newest first.
CREATE INDEX cdr_tenant_callee_idx ON cdr (tenant_id, callee text_pattern_ops, start_time);
CREATE INDEX cdr_tenant_caller_idx ON cdr (tenant_id, caller text_pattern_ops, start_time);
-- Long (or short) calls: a duration bound alone is too selective to be found quickly by
-- reading the time range (calls over 20 minutes are a few in ten thousand).
CREATE INDEX cdr_tenant_duration_idx ON cdr (tenant_id, duration);
