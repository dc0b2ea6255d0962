-- CDR-Stats collector schema, version 7: CSV imports (docs/csv-import.md).
-- A CSV file from any switch or carrier is mapped with a named profile (the mapping options of
-- the agent's CSV plugin) and stored through the ingest transaction (store.py); an import_job
-- row follows its progress, import_reject keeps the rows it could not use (bounded per job).

-- A tenant's saved mappings. `options` holds the CSV plugin's mapping options as a JSON object
-- (the same keys as a [[source]] table: preset, header, delimiter, fields, time_format...).
-- The built-in profiles (asterisk, freeswitch-example, freeswitch-default) are not stored.
CREATE TABLE import_profile (
    tenant_id   bigint NOT NULL REFERENCES tenant (id),
    name        text NOT NULL CHECK (name <> ''),
    options     jsonb NOT NULL CHECK (jsonb_typeof(options) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, name)
);

-- One import of one file. Counters are updated in the transaction that stores each batch, so
-- they always match what is in cdr; each update also sends NOTIFY cdrstats_import.
-- agent_id is what the imported cdr rows carry in cdr.agent_id: a per-tenant pseudo-agent id
-- (uuid5, see csvimport.import_agent_id) with no agent row.
CREATE TABLE import_job (
    tenant_id     bigint NOT NULL,
    id            uuid NOT NULL,
    switch_id     bigint NOT NULL,
    agent_id      uuid NOT NULL,
    profile       text NOT NULL,
    options       jsonb NOT NULL,          -- the mapping options used, detection included
    file_name     text NOT NULL,
    file_size     bigint NOT NULL,
    status        text NOT NULL DEFAULT 'running'
                  CHECK (status IN ('running', 'done', 'failed')),
    error         text,
    rows_read     bigint NOT NULL DEFAULT 0,
    imported      bigint NOT NULL DEFAULT 0,
    duplicates    bigint NOT NULL DEFAULT 0,
    rejected      bigint NOT NULL DEFAULT 0,
    created_by    text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, switch_id) REFERENCES switch (tenant_id, id)
);
CREATE INDEX import_job_started_idx ON import_job (tenant_id, started_at DESC);

-- The rows an import could not use: line number (first physical line of the record), why,
-- and the record's text (truncated). At most csvimport.MAX_REJECTS_KEPT per job; the job's
-- `rejected` counter counts them all.
CREATE TABLE import_reject (
    tenant_id  bigint NOT NULL,
    job_id     uuid NOT NULL,
    line       bigint NOT NULL,
    reason     text NOT NULL,
    raw        text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, job_id, line),
    FOREIGN KEY (tenant_id, job_id) REFERENCES import_job (tenant_id, id) ON DELETE CASCADE
);

-- Row-level security as for the other tenant tables (migration 0003).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['import_profile', 'import_job', 'import_reject']
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
