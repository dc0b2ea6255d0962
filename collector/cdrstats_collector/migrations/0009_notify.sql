-- CDR-Stats collector schema, version 9: alert notifications (docs/notifications.md).
-- A tenant's channels (email addresses over the collector's SMTP relay, or a webhook URL
-- signed with the channel's secret) and one notify_delivery row per attempt to send an alert
-- through a channel. The delivery loop (notify.py) claims alerts whose notify_state is
-- 'pending' (migration 0008) with FOR UPDATE SKIP LOCKED.

CREATE TABLE notify_channel (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id     bigint NOT NULL REFERENCES tenant (id),
    name          text NOT NULL DEFAULT '',
    kind          text NOT NULL CHECK (kind IN ('email', 'webhook')),
    target        text NOT NULL CHECK (target <> ''),   -- "a@x, b@y" or the webhook URL
    secret        text NOT NULL DEFAULT '',             -- webhook HMAC-SHA256 key
    min_severity  text NOT NULL DEFAULT 'warning'
                  CHECK (min_severity IN ('info', 'warning', 'critical')),
    enabled       boolean NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text NOT NULL DEFAULT ''
);
CREATE INDEX notify_channel_tenant_idx ON notify_channel (tenant_id) WHERE enabled;

CREATE TABLE notify_delivery (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   bigint NOT NULL,
    alert_id    bigint NOT NULL REFERENCES alert (id) ON DELETE CASCADE,
    channel_id  bigint REFERENCES notify_channel (id) ON DELETE SET NULL,
    kind        text NOT NULL,               -- the channel as it was (it may be deleted since)
    target      text NOT NULL,
    attempt     integer NOT NULL CHECK (attempt >= 1),
    at          timestamptz NOT NULL DEFAULT now(),
    ok          boolean NOT NULL,
    error       text
);
CREATE INDEX notify_delivery_alert_idx ON notify_delivery (alert_id, channel_id);
CREATE INDEX notify_delivery_channel_idx ON notify_delivery (channel_id);

-- When the next attempt is due (backoff after a failure), or when the lease of a collector
-- sending it runs out (notify_state 'sending').
ALTER TABLE alert ADD COLUMN notify_next_at timestamptz;
CREATE INDEX alert_notify_due_idx ON alert (notify_next_at, id)
    WHERE notify_state IN ('pending', 'sending');

-- Row-level security as for the other tenant tables (migration 0003). Readers never see a
-- webhook's secret: they get every column of notify_channel but that one.
ALTER TABLE notify_channel ENABLE ROW LEVEL SECURITY;
ALTER TABLE notify_channel FORCE ROW LEVEL SECURITY;
ALTER TABLE notify_delivery ENABLE ROW LEVEL SECURITY;
ALTER TABLE notify_delivery FORCE ROW LEVEL SECURITY;
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['notify_channel', 'notify_delivery']
    LOOP
        EXECUTE format('CREATE POLICY cdrstats_owner_all ON %I TO %I USING (true) WITH CHECK (true)',
                       t, current_user);
        EXECUTE format('CREATE POLICY cdrstats_tenant_read ON %I FOR SELECT TO cdrstats_reader'
                       ' USING (tenant_id = cdrstats_current_tenant())', t);
    END LOOP;
END
$$;
GRANT SELECT (id, tenant_id, name, kind, target, min_severity, enabled, created_at, created_by)
    ON notify_channel TO cdrstats_reader;
GRANT SELECT ON notify_delivery TO cdrstats_reader;
