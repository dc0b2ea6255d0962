-- CDR-Stats collector schema, version 4: calls in progress (the live path).
-- Written by POST /api/v1/live (cdrstats_collector/live.py); see docs/protocol.md, "Live calls".
-- Live state is disposable: a snapshot from the switch rebuilds it, so nothing here is kept
-- for long, and none of it is a CDR.

-- One row per (switch, source) that streams live calls. Its calls are valid until
-- expires_at (seen_at + the collector's [live] stale_s): a source the agent stops reporting
-- (agent down, network cut, plugin disconnected from its switch) is forgotten by itself.
-- Deleting the row deletes its calls (maintenance prunes expired rows).
CREATE TABLE live_source (
    tenant_id    bigint NOT NULL,
    switch_id    bigint NOT NULL,
    source       text NOT NULL,
    agent_id     uuid NOT NULL REFERENCES agent (id),
    seen_at      timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    snapshot_at  timestamptz,
    PRIMARY KEY (tenant_id, switch_id, source),
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);
CREATE INDEX live_source_expires_idx ON live_source (expires_at);

-- Calls in progress, as the switch last described them.
CREATE TABLE live_call (
    tenant_id    bigint NOT NULL,
    switch_id    bigint NOT NULL,
    source       text NOT NULL,
    call_id      text NOT NULL,
    agent_id     uuid NOT NULL,
    state        text NOT NULL CHECK (state IN ('ringing', 'answered')),
    direction    text NOT NULL DEFAULT 'unknown'
                 CHECK (direction IN ('inbound', 'outbound', 'internal', 'unknown')),
    caller       text,
    callee       text,
    caller_name  text,
    accountcode  text,
    started_at   timestamptz,
    answered_at  timestamptz,
    src_ip       inet,
    trunk        text,
    user_agent   text,
    read_codec   text,
    write_codec  text,
    event_at     timestamptz NOT NULL,     -- switch time of the last event about the call
    updated_at   timestamptz NOT NULL DEFAULT now(),   -- collector time of the last change
    PRIMARY KEY (tenant_id, switch_id, source, call_id),
    FOREIGN KEY (tenant_id, switch_id, source)
        REFERENCES live_source (tenant_id, switch_id, source) ON DELETE CASCADE
);

-- The highest number of calls in progress seen per switch and minute (UTC), recorded with each
-- live message: lets concurrency figures be corrected with what the switch reported.
CREATE TABLE live_count_minute (
    tenant_id  bigint NOT NULL,
    switch_id  bigint NOT NULL,
    minute     timestamptz NOT NULL,
    calls_max  integer NOT NULL CHECK (calls_max >= 0),
    PRIMARY KEY (tenant_id, switch_id, minute)
);

-- Replay protection: the newest live message applied per agent. A message is applied only if
-- it continues the same stream with a higher seq, or starts a new stream (agent restart) with
-- a sent_at after the last one applied. Not tenant data: never readable through the API.
CREATE TABLE live_agent (
    agent_id     uuid PRIMARY KEY REFERENCES agent (id),
    stream       text NOT NULL,
    seq          bigint NOT NULL,
    sent_at      bigint NOT NULL,          -- µs since the epoch, the agent's clock
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Row-level security, as migration 0003 set it up for the other tenant tables: the owner (the
-- collector) reads and writes everything, cdrstats_reader sees one tenant's rows.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['live_source', 'live_call', 'live_count_minute']
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
