-- CDR-Stats collector schema, version 11: failed SIP registrations (and other failed
-- authentications) that switches report on the live channel (docs/protocol.md, "Failed
-- registrations"). CDRs do not carry them; `scanner` rules count them per source IP beside
-- failed calls (docs/rules.md). Written by POST /api/v1/live (authfail.py).
--
-- Kept compact: one row per switch, source address and minute (UTC, the switch's time of
-- the failure), with the number of failures and what the last one tried. Detection data,
-- not a record: maintenance deletes rows older than [maintenance] auth_failures_days (7).

CREATE TABLE auth_failure_minute (
    tenant_id       bigint NOT NULL,
    switch_id       bigint NOT NULL,
    minute          timestamptz NOT NULL,
    src_ip          inet NOT NULL,
    failures        integer NOT NULL CHECK (failures > 0),
    first_at        timestamptz NOT NULL,
    last_at         timestamptz NOT NULL,
    usernames       text[] NOT NULL DEFAULT '{}',   -- distinct accounts tried, at most 20
    last_username   text,
    last_sip_code   integer,
    last_reason     text,
    last_method     text,
    last_transport  text,
    last_source     text,                            -- the agent's source that reported it
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, minute, switch_id, src_ip),
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);
CREATE INDEX auth_failure_minute_minute_idx ON auth_failure_minute (minute);

-- Row-level security as for the other tenant tables (migrations 0003, 0004).
DO $$
BEGIN
    ALTER TABLE auth_failure_minute ENABLE ROW LEVEL SECURITY;
    ALTER TABLE auth_failure_minute FORCE ROW LEVEL SECURITY;
    EXECUTE format('CREATE POLICY cdrstats_owner_all ON auth_failure_minute TO %I'
                   ' USING (true) WITH CHECK (true)', current_user);
    CREATE POLICY cdrstats_tenant_read ON auth_failure_minute FOR SELECT TO cdrstats_reader
        USING (tenant_id = cdrstats_current_tenant());
    GRANT SELECT ON auth_failure_minute TO cdrstats_reader;
END
$$;
