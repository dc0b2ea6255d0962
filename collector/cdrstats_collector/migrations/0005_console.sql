-- CDR-Stats collector schema, version 5: the web console's audit log.
-- Every administrative action done in the console (tenant and user creation, enrollment
-- tokens, agent revocation) is recorded in the same transaction as the action itself
-- (cdrstats_web/audit.py). tenant_id is NULL for actions that concern no single tenant
-- (a superadmin creating a tenant or a superadmin user).

CREATE TABLE audit_log (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         timestamptz NOT NULL DEFAULT now(),
    tenant_id  bigint REFERENCES tenant (id),
    user_id    bigint REFERENCES app_user (id) ON DELETE SET NULL,
    username   text NOT NULL,            -- kept when the user is deleted
    action     text NOT NULL CHECK (action <> ''),
    target     text NOT NULL DEFAULT '',
    detail     jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_tenant_at_idx ON audit_log (tenant_id, at DESC);
CREATE INDEX audit_log_at_idx ON audit_log (at DESC);

-- The same row-level security as the other tenant tables (migration 0003).
ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format(
        'CREATE POLICY cdrstats_owner_all ON audit_log TO %I USING (true) WITH CHECK (true)',
        current_user);
END
$$;
CREATE POLICY cdrstats_tenant_read ON audit_log FOR SELECT TO cdrstats_reader
    USING (tenant_id = cdrstats_current_tenant());
GRANT SELECT ON audit_log TO cdrstats_reader;
