-- CDR-Stats collector schema, version 10: account codes mapped to tenants, and the spool
-- status each agent reports with its batches.
--
-- accountcode_map: a CDR whose accountcode matches a row is stored under that row's tenant
-- instead of its switch's (one switch shared by several customers). A row with a switch
-- applies to that switch only and wins over a row without one (any switch). Applied at
-- ingest (store.py), in the ingest transaction; CDRs stored before a change keep their
-- tenant. Managed by superadmins (console Admin page; tenants.add_accountcode).

CREATE TABLE accountcode_map (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    accountcode  text NOT NULL CHECK (accountcode <> '' AND length(accountcode) <= 100),
    switch_id    bigint REFERENCES switch (id),          -- NULL: on any switch
    tenant_id    bigint NOT NULL REFERENCES tenant (id),
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accountcode_map_code_idx ON accountcode_map (accountcode, coalesce(switch_id, 0));
CREATE INDEX accountcode_map_tenant_idx ON accountcode_map (tenant_id);

-- The same row-level security as the other tenant tables (migration 0003): a tenant reads
-- the mappings that bring it CDRs.
ALTER TABLE accountcode_map ENABLE ROW LEVEL SECURITY;
ALTER TABLE accountcode_map FORCE ROW LEVEL SECURITY;
DO $$
BEGIN
    EXECUTE format(
        'CREATE POLICY cdrstats_owner_all ON accountcode_map TO %I USING (true) WITH CHECK (true)',
        current_user);
END
$$;
CREATE POLICY cdrstats_tenant_read ON accountcode_map FOR SELECT TO cdrstats_reader
    USING (tenant_id = cdrstats_current_tenant());
GRANT SELECT ON accountcode_map TO cdrstats_reader;

-- The switches whose CDRs the current tenant may see: its own, and those another tenant's
-- switch brings it through a mapping naming that switch. Only ids and names (never another
-- tenant's other data); SECURITY DEFINER because the reader sees only its own switch rows.
CREATE FUNCTION cdrstats_visible_switches() RETURNS TABLE (id bigint, name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT s.id, s.name FROM switch s WHERE s.tenant_id = cdrstats_current_tenant()
    UNION
    SELECT s.id, s.name FROM accountcode_map m JOIN switch s ON s.id = m.switch_id
    WHERE m.tenant_id = cdrstats_current_tenant()
$$;
REVOKE ALL ON FUNCTION cdrstats_visible_switches() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION cdrstats_visible_switches() TO cdrstats_reader;

-- What the agent reported with its last stored batch (docs/protocol.md, payload `spool`):
-- batches and CDRs waiting in its spool besides that batch, and how long the oldest CDR of
-- that batch had waited (delivery lag). NULL: an agent that does not report them.
ALTER TABLE agent
    ADD COLUMN spool_batches  integer,
    ADD COLUMN spool_cdrs     bigint,
    ADD COLUMN spool_lag_s    double precision,
    ADD COLUMN status_at      timestamptz;
