-- CDR-Stats collector schema, version 8: rules and alerts (docs/rules.md).
--
-- * rule: a tenant's alert rule (rules.py validates the document): what to measure (kind),
--   on which calls (scope), with which parameters and window, and what to do (action).
-- * alert: one row per EPISODE of a rule on one scope key (episode_key): opened when the
--   condition starts to hold, kept (last_seen_at) while it holds, resolved when it clears
--   (alerts.py, evaluator.py). The notifier (email, webhooks) reads notify_state.
-- * dest_list / dest_list_saved: per-tenant destination prefix lists: 'risk' (high-risk and
--   premium ranges, defaults shipped in riskprefix.py until the tenant saves its own list),
--   'blacklist' (calls to these fire blacklist rules) and 'whitelist' (exempt from both).

CREATE TABLE rule (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id    bigint NOT NULL REFERENCES tenant (id),
    name         text NOT NULL CHECK (name <> ''),
    enabled      boolean NOT NULL DEFAULT true,
    kind         text NOT NULL,
    scope        jsonb NOT NULL DEFAULT '{}',
    params       jsonb NOT NULL DEFAULT '{}',
    window_s     integer NOT NULL CHECK (window_s BETWEEN 60 AND 604800),
    severity     text NOT NULL DEFAULT 'warning' CHECK (severity IN ('info', 'warning', 'critical')),
    action       text NOT NULL DEFAULT 'notify' CHECK (action IN ('notify', 'block_source_ip')),
    block_ttl_s  integer NOT NULL DEFAULT 3600 CHECK (block_ttl_s BETWEEN 1 AND 2592000),
    snooze_s     integer NOT NULL DEFAULT 3600 CHECK (snooze_s BETWEEN 1 AND 2592000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now(),
    updated_by   text NOT NULL DEFAULT '',
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);

CREATE TABLE alert (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id        bigint NOT NULL REFERENCES tenant (id),
    rule_id          bigint REFERENCES rule (id) ON DELETE SET NULL,
    episode_key      text NOT NULL,
    state            text NOT NULL DEFAULT 'open'
                     CHECK (state IN ('open', 'acknowledged', 'snoozed', 'resolved')),
    severity         text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    title            text NOT NULL,
    detail           jsonb NOT NULL DEFAULT '{}',
    opened_at        timestamptz NOT NULL DEFAULT now(),
    last_seen_at     timestamptz NOT NULL DEFAULT now(),
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    snoozed_until    timestamptz,
    resolved_at      timestamptz,
    resolved_by      text,
    action           jsonb,
    notify_state     text NOT NULL DEFAULT 'pending'
                     CHECK (notify_state IN ('pending', 'sending', 'sent', 'failed', 'none')),
    notify_attempts  integer NOT NULL DEFAULT 0,
    notified_at      timestamptz,
    notify_error     text
);
-- At most one episode in progress per rule and key (the evaluator relies on it).
CREATE UNIQUE INDEX alert_episode_idx ON alert (tenant_id, rule_id, episode_key)
    WHERE state <> 'resolved';
CREATE INDEX alert_tenant_opened_idx ON alert (tenant_id, opened_at DESC);
CREATE INDEX alert_notify_idx ON alert (notify_state) WHERE notify_state IN ('pending', 'sending');

CREATE TABLE dest_list (
    tenant_id   bigint NOT NULL REFERENCES tenant (id),
    list        text NOT NULL CHECK (list IN ('risk', 'blacklist', 'whitelist')),
    prefix      text NOT NULL CHECK (prefix ~ '^[1-9][0-9]{0,14}$'),
    note        text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, list, prefix)
);

-- A row here: the tenant saved its own list (for 'risk': the shipped defaults no longer apply).
CREATE TABLE dest_list_saved (
    tenant_id   bigint NOT NULL REFERENCES tenant (id),
    list        text NOT NULL CHECK (list IN ('risk', 'blacklist', 'whitelist')),
    saved_at    timestamptz NOT NULL DEFAULT now(),
    saved_by    text NOT NULL DEFAULT '',
    PRIMARY KEY (tenant_id, list)
);

-- Row-level security as for the other tenant tables (migration 0003).
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['rule', 'alert', 'dest_list', 'dest_list_saved']
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
