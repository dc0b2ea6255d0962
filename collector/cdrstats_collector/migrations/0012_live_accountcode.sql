-- CDR-Stats collector schema, version 12: calls in progress follow the account-code mapping
-- (migration 0010) as CDRs do at ingest (live.py; docs/decisions/0010-...).
--
-- A call in progress goes to the tenant its accountcode is mapped to, the switch's tenant
-- otherwise. So a (switch, source) has one live_source row per tenant that has calls on it:
-- the switch's tenant always, and each tenant a call is mapped to (live.py removes that row
-- when the tenant's last call there ends). All rows of a (switch, source) are refreshed by
-- the same statement, so they expire together. Row-level security is unchanged: each tenant
-- reads its own live_source, live_call and live_count_minute rows.

-- A live source may now belong to another tenant than its switch's: reference the switch
-- (and the tenant) alone, as accountcode_map does.
ALTER TABLE live_source DROP CONSTRAINT live_source_tenant_id_switch_id_fkey;
ALTER TABLE live_source
    ADD CONSTRAINT live_source_switch_id_fkey FOREIGN KEY (switch_id) REFERENCES switch (id),
    ADD CONSTRAINT live_source_tenant_id_fkey FOREIGN KEY (tenant_id) REFERENCES tenant (id);
CREATE INDEX live_source_switch_idx ON live_source (switch_id, source);

-- A call is under one tenant at a time: when its code changes, its row moves (the same row,
-- a new tenant_id), it is never doubled. Also the index of "this call on this source".
CREATE UNIQUE INDEX live_call_call_idx ON live_call (switch_id, source, call_id);

-- The names of the switches a tenant's data comes from: also the switches that carry its
-- calls in progress right now (an any-switch mapping names no switch).
CREATE OR REPLACE FUNCTION cdrstats_visible_switches() RETURNS TABLE (id bigint, name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT s.id, s.name FROM switch s WHERE s.tenant_id = cdrstats_current_tenant()
    UNION
    SELECT s.id, s.name FROM accountcode_map m JOIN switch s ON s.id = m.switch_id
    WHERE m.tenant_id = cdrstats_current_tenant()
    UNION
    SELECT s.id, s.name FROM live_source l JOIN switch s ON s.id = l.switch_id
    WHERE l.tenant_id = cdrstats_current_tenant()
$$;
