-- A tenant also sees the names of the switches its CDRs came from through an any-switch
-- account-code mapping (migration 0010 named only the switches a mapping names; 0012 added those
-- carrying the tenant's live calls). The tenant's daily aggregates say which switches those
-- are, cheaply (a few rows per switch and day, under the tenant's key).
CREATE OR REPLACE FUNCTION cdrstats_visible_switches() RETURNS TABLE (id bigint, name text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path FROM CURRENT AS $$
    SELECT s.id, s.name FROM switch s WHERE s.tenant_id = cdrstats_current_tenant()
    UNION
    SELECT s.id, s.name FROM accountcode_map m JOIN switch s ON s.id = m.switch_id
    WHERE m.tenant_id = cdrstats_current_tenant()
    UNION
    SELECT s.id, s.name FROM live_source l JOIN switch s ON s.id = l.switch_id
    WHERE l.tenant_id = cdrstats_current_tenant()
    UNION
    SELECT s.id, s.name FROM switch s WHERE s.id IN (
        SELECT DISTINCT d.switch_id FROM agg_kpi_day d
        WHERE d.tenant_id = cdrstats_current_tenant())
$$;
