-- CDR-Stats collector schema, version 1.
-- Applied by `cdrstats db upgrade` (cdrstats_collector/migrate.py) in one transaction.
-- Every table that holds tenant data carries tenant_id; the cdr table keeps it first in its
-- primary key so that the schema can be distributed by tenant (Citus) without a rewrite.
-- tenant, switch, agent and app_user are small and would become reference tables there.

CREATE TABLE tenant (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (name <> ''),
    timezone    text NOT NULL DEFAULT 'UTC',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE switch (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL REFERENCES tenant (id),
    name        text NOT NULL CHECK (name <> ''),
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, name),
    -- lets other tables reference (tenant_id, switch_id) together: a switch of another
    -- tenant can never be attached to a row by mistake.
    UNIQUE (tenant_id, id)
);

CREATE TABLE agent (
    id            uuid PRIMARY KEY,
    tenant_id     bigint NOT NULL,
    switch_id     bigint NOT NULL,
    public_key    bytea NOT NULL CHECK (length(public_key) = 32),
    hostname      text NOT NULL DEFAULT '',
    version       text NOT NULL DEFAULT '',
    enrolled_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_seen_at  timestamptz,
    last_seq      bigint NOT NULL DEFAULT 0,
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);
CREATE INDEX agent_tenant_idx ON agent (tenant_id, switch_id);

CREATE TABLE agent_token (
    token_hash  bytea PRIMARY KEY,          -- sha256 of the token; the token itself is never stored
    tenant_id   bigint NOT NULL,
    switch_id   bigint NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    agent_id    uuid REFERENCES agent (id),
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);

-- One row per committed batch: recognises redeliveries and returns the same ack.
-- Pruned by maintenance after a number of days (see migrate/maintenance).
CREATE TABLE ingest_batch (
    agent_id     uuid NOT NULL REFERENCES agent (id),
    seq          bigint NOT NULL,
    body_sha256  bytea NOT NULL,
    ack          jsonb NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (agent_id, seq)
);
CREATE INDEX ingest_batch_received_idx ON ingest_batch (received_at);

CREATE TABLE app_user (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       text NOT NULL UNIQUE CHECK (username <> ''),
    password_hash  text NOT NULL,          -- argon2id, PHC string
    role           text NOT NULL
                   CHECK (role IN ('superadmin', 'tenant_admin', 'tenant_viewer')),
    tenant_id      bigint REFERENCES tenant (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- no "global tenant" sentinel: a superadmin has no tenant, everybody else exactly one.
    CHECK ((role = 'superadmin') = (tenant_id IS NULL))
);

-- The collector's Ed25519 key pair; it signs commands sent to agents.
-- The newest row without retired_at is the active key (see docs/decisions/0002).
CREATE TABLE collector_key (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    public_key   bytea NOT NULL CHECK (length(public_key) = 32),
    private_key  bytea NOT NULL CHECK (length(private_key) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    retired_at   timestamptz
);

-- Call-detail records, partitioned by month of start_time (UTC). No DEFAULT partition:
-- partitions are created ahead by maintenance and on demand at ingest.
-- No foreign keys: they would cost a lookup per row at ingest; tenant_id/switch_id come from
-- the enrolled agent row, never from the client.
CREATE TABLE cdr (
    tenant_id     bigint NOT NULL,
    switch_id     bigint NOT NULL,
    key           text NOT NULL,
    start_time    timestamptz NOT NULL,
    answer_time   timestamptz,
    end_time      timestamptz,
    duration      integer NOT NULL,
    billsec       integer NOT NULL,
    disposition   text NOT NULL
                  CHECK (disposition IN ('ANSWERED', 'NO_ANSWER', 'BUSY', 'FAILED', 'CANCELLED')),
    direction     text NOT NULL,
    caller        text NOT NULL,
    caller_name   text NOT NULL,
    callee        text NOT NULL,
    caller_e164   text,
    callee_e164   text,
    accountcode   text NOT NULL,
    hangup_cause  integer,
    sip_code      integer,
    ring_time     integer,
    src_ip        inet,
    read_codec    text,
    write_codec   text,
    trunk         text,
    user_agent    text,
    call_group    text,
    extra         jsonb NOT NULL,
    agent_id      uuid NOT NULL,
    received_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, switch_id, start_time, key)
) PARTITION BY RANGE (start_time);

-- Creates the monthly partition holding `p_month` if it does not exist yet.
-- SECURITY DEFINER so that the application may later connect as a role that does not own
-- cdr (row-level security) and still create partitions at ingest. Serialised by an advisory
-- transaction lock, so concurrent collectors never race on the same month.
CREATE FUNCTION cdr_ensure_partition(p_month date) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    m date := date_trunc('month', p_month)::date;
    part text := format('cdr_y%sm%s', to_char(m, 'YYYY'), to_char(m, 'MM'));
BEGIN
    PERFORM pg_advisory_xact_lock(1128551251, 2);   -- 'CDRS', 2: partition creation
    IF to_regclass(part) IS NULL THEN
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF cdr FOR VALUES FROM (%L) TO (%L)',
            part,
            (m::timestamp AT TIME ZONE 'UTC'),
            ((m + interval '1 month')::timestamp AT TIME ZONE 'UTC'));
    END IF;
    RETURN part;
END
$$;
