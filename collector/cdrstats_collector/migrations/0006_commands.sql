-- CDR-Stats collector schema, version 6: the command queue (remote actions, docs/actions.md).
-- A command is created by a user (API, CLI) or a rule, signed with the collector key and kept
-- here until the target agent reports its result; agents long-poll for their pending commands
-- on any collector (NOTIFY cdrstats_command, '<agent id>' wakes the one holding the poll).
-- Every creation and every result is also written to audit_log (migration 0005).

-- The last command seq given to each agent (the agent refuses a seq it has seen: replay).
CREATE TABLE command_seq (
    agent_id  uuid PRIMARY KEY REFERENCES agent (id),
    last_seq  bigint NOT NULL
);

CREATE TABLE command (
    id            uuid PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    switch_id     bigint NOT NULL,
    agent_id      uuid NOT NULL REFERENCES agent (id),
    seq           bigint NOT NULL,
    verb          text NOT NULL CHECK (verb <> ''),
    args          jsonb NOT NULL DEFAULT '{}',
    envelope      bytea NOT NULL,            -- the signed command, exactly as delivered
    user_id       bigint REFERENCES app_user (id) ON DELETE SET NULL,
    issued_by     text NOT NULL,             -- username, "cli:<os user>" or "rule:<name>"
    issued_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,      -- not delivered after this (the agent refuses it)
    deliveries    integer NOT NULL DEFAULT 0,
    delivered_at  timestamptz,
    status        text NOT NULL DEFAULT 'pending'
                  CHECK (status IN ('pending', 'done', 'failed', 'refused')),
    result        text,
    finished_at   timestamptz,
    UNIQUE (agent_id, seq),
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);
CREATE INDEX command_pending_idx ON command (agent_id, seq) WHERE status = 'pending';
CREATE INDEX command_tenant_idx ON command (tenant_id, issued_at DESC);

-- Blocks the agents reported as done (not dry runs); a row past expires_at is no longer
-- active (the nftables element has timed out on the switch).
CREATE TABLE ip_block (
    tenant_id   bigint NOT NULL,
    switch_id   bigint NOT NULL,
    ip          inet NOT NULL,
    blocked_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    command_id  uuid NOT NULL REFERENCES command (id),
    PRIMARY KEY (tenant_id, switch_id, ip),
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);

-- Operator entries that can never be blocked, for one tenant or (tenant_id NULL) for all;
-- the agent has its own allowlist as well ([actions] allowlist, its host, the collector).
CREATE TABLE block_allowlist (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint REFERENCES tenant (id),
    network     cidr NOT NULL,
    note        text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX block_allowlist_entry_idx ON block_allowlist (coalesce(tenant_id, 0), network);

-- Row-level security as for the other tenant tables (migration 0003).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['command', 'ip_block']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY cdrstats_owner_all ON %I TO %I USING (true) WITH CHECK (true)',
                       t, current_user);
        EXECUTE format('CREATE POLICY cdrstats_tenant_read ON %I FOR SELECT TO cdrstats_reader'
                       ' USING (tenant_id = cdrstats_current_tenant())', t);
        EXECUTE format('GRANT SELECT ON %I TO cdrstats_reader', t);
    END LOOP;
END
$$;
