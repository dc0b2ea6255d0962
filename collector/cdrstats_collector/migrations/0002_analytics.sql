-- CDR-Stats collector schema, version 2: analytics.
--
-- What this adds (see docs/analytics.md for the semantics of every counter):
--
-- * switch: the switch's numbering plan, used to turn numbers written in a local dial format
--   into E.164 when the agent did not send caller_e164/callee_e164:
--     country               ISO 3166 alpha-2 of the switch's own country (NULL: unknown, then
--                           only numbers already in international form are classified)
--     international_prefix  '00' by default ('011' in North America, '' when none)
--     national_prefix       '0' by default ('1' in North America, '' when none)
--
-- * tenant.cdr_retention_days: raw CDRs of this tenant are kept this many days (NULL: the
--   collector's global setting). Aggregates have their own, global, retention.
--
-- * dial_prefix: one table of dial codes for the whole collector (not per tenant), edited with
--   `cdrstats prefix import FILE` / `cdrstats prefix list`. `prefix` is E.164 digits without
--   '+', country code included ('33', '336', '4475'); the longest prefix that matches a
--   callee's E.164 number wins and gives cdr.dest_prefix; its country and kind, when set,
--   override what the phonenumbers library says.
--
-- * cdr.dest_country / dest_kind / dest_prefix: the callee's destination, decided once at
--   ingest (see classify.py): ISO alpha-2 country, kind (mobile, fixed, toll_free, premium...),
--   and the matched dial_prefix.prefix. NULL when the callee has no E.164 form (extensions,
--   service codes) or nothing matched. Later edits of the prefix table do not reclassify
--   stored CDRs.
--
-- * Aggregates, maintained in the ingest transaction (store.py + aggregates.py), one row per
--   bucket and key, counters only ever added to. Every table is keyed tenant_id first.
--   Buckets: `hour` is a UTC hour (timestamptz, date_trunc('hour', start_time)); `day` is the
--   TENANT'S LOCAL calendar day of start_time in tenant.timezone (DST and half-hour offsets
--   exact). A CDR counts in the bucket of its start_time, however late it arrives. In keys,
--   an unknown value is '' for text and 0 for numbers (never NULL).
--
--   The metric set (M) of kpi, dest and trunk tables:
--     calls, answered, busy, no_answer, failed, cancelled   counts by disposition
--     ner_ok         calls that the network completed (answered, busy, no answer, cancelled
--                    by the caller, or a user-side Q.850 cause 17-21): NER = ner_ok / calls
--     duration_sum   seconds, start to end;   billsec_sum   seconds, answer to end
--     ring_time_sum, ring_count                sum and number of known ring times (s)
--   From them: ASR = answered/calls, ACD = billsec_sum/answered, ALOC = duration_sum/calls,
--   minutes = billsec_sum/60, mean ring time = ring_time_sum/ring_count.
--
--   agg_kpi_hour   (tenant_id, hour, switch_id, direction)          M
--   agg_kpi_day    (tenant_id, day,  switch_id, direction)          M
--   agg_dest_hour  (tenant_id, hour, direction, dest_country, dest_kind, dest_prefix)   M
--   agg_dest_day   (tenant_id, day,  direction, dest_country, dest_kind, dest_prefix)   M
--   agg_cause_hour (tenant_id, hour, switch_id, direction, disposition, hangup_cause,
--                   sip_code)                                       calls, billsec_sum
--   agg_cause_day  (tenant_id, day,  ... same keys)                 calls, billsec_sum
--   agg_trunk_hour (tenant_id, hour, switch_id, direction, trunk)   M
--   agg_trunk_day  (tenant_id, day,  switch_id, direction, trunk)   M
--
--   Concurrent calls (switch_id 0 = all switches of the tenant together):
--   agg_conc_minute (tenant_id, switch_id, minute)  calls: calls in progress at some time
--                   during that UTC minute ([start, end) overlaps it; a call with no length
--                   counts in its start minute; at most 1440 minutes per call)
--   agg_conc_hour   (tenant_id, switch_id, hour)    peak: max of agg_conc_minute.calls over
--                                                   the minutes of that UTC hour
--   agg_conc_day    (tenant_id, switch_id, day)     peak: same over the tenant's local day
--
--   Rebuild any range from the cdr table with aggregates.rebuild() (set-based SQL).

ALTER TABLE switch
    ADD COLUMN country text CHECK (country ~ '^[A-Z]{2}$'),
    ADD COLUMN international_prefix text NOT NULL DEFAULT '00'
        CHECK (international_prefix ~ '^[0-9]{0,6}$'),
    ADD COLUMN national_prefix text NOT NULL DEFAULT '0'
        CHECK (national_prefix ~ '^[0-9]{0,6}$');

ALTER TABLE tenant
    ADD COLUMN cdr_retention_days integer CHECK (cdr_retention_days > 0);

CREATE TABLE dial_prefix (
    prefix      text PRIMARY KEY CHECK (prefix ~ '^[1-9][0-9]{0,14}$'),
    name        text NOT NULL CHECK (name <> ''),
    country     text CHECK (country ~ '^[A-Z]{2}$'),
    kind        text CHECK (kind IN ('fixed', 'mobile', 'fixed_or_mobile', 'toll_free',
                                     'premium', 'shared_cost', 'voip', 'personal', 'pager',
                                     'uan', 'voicemail', 'special', 'unknown')),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE cdr
    ADD COLUMN dest_country text,
    ADD COLUMN dest_kind    text,
    ADD COLUMN dest_prefix  text;

CREATE TABLE agg_kpi_hour (
    tenant_id      bigint NOT NULL,
    hour           timestamptz NOT NULL,
    switch_id      bigint NOT NULL,
    direction      text NOT NULL,
    calls          integer NOT NULL,
    answered       integer NOT NULL,
    busy           integer NOT NULL,
    no_answer      integer NOT NULL,
    failed         integer NOT NULL,
    cancelled      integer NOT NULL,
    ner_ok         integer NOT NULL,
    duration_sum   bigint NOT NULL,
    billsec_sum    bigint NOT NULL,
    ring_time_sum  bigint NOT NULL,
    ring_count     integer NOT NULL,
    PRIMARY KEY (tenant_id, hour, switch_id, direction)
) WITH (fillfactor = 85);

CREATE TABLE agg_kpi_day (
    tenant_id      bigint NOT NULL,
    day            date NOT NULL,
    switch_id      bigint NOT NULL,
    direction      text NOT NULL,
    calls          integer NOT NULL,
    answered       integer NOT NULL,
    busy           integer NOT NULL,
    no_answer      integer NOT NULL,
    failed         integer NOT NULL,
    cancelled      integer NOT NULL,
    ner_ok         integer NOT NULL,
    duration_sum   bigint NOT NULL,
    billsec_sum    bigint NOT NULL,
    ring_time_sum  bigint NOT NULL,
    ring_count     integer NOT NULL,
    PRIMARY KEY (tenant_id, day, switch_id, direction)
) WITH (fillfactor = 85);

CREATE TABLE agg_dest_hour (
    tenant_id      bigint NOT NULL,
    hour           timestamptz NOT NULL,
    direction      text NOT NULL,
    dest_country   text NOT NULL,
    dest_kind      text NOT NULL,
    dest_prefix    text NOT NULL,
    calls          integer NOT NULL,
    answered       integer NOT NULL,
    busy           integer NOT NULL,
    no_answer      integer NOT NULL,
    failed         integer NOT NULL,
    cancelled      integer NOT NULL,
    ner_ok         integer NOT NULL,
    duration_sum   bigint NOT NULL,
    billsec_sum    bigint NOT NULL,
    ring_time_sum  bigint NOT NULL,
    ring_count     integer NOT NULL,
    PRIMARY KEY (tenant_id, hour, direction, dest_country, dest_kind, dest_prefix)
) WITH (fillfactor = 85);

CREATE TABLE agg_dest_day (
    tenant_id      bigint NOT NULL,
    day            date NOT NULL,
    direction      text NOT NULL,
    dest_country   text NOT NULL,
    dest_kind      text NOT NULL,
    dest_prefix    text NOT NULL,
    calls          integer NOT NULL,
    answered       integer NOT NULL,
    busy           integer NOT NULL,
    no_answer      integer NOT NULL,
    failed         integer NOT NULL,
    cancelled      integer NOT NULL,
    ner_ok         integer NOT NULL,
    duration_sum   bigint NOT NULL,
    billsec_sum    bigint NOT NULL,
    ring_time_sum  bigint NOT NULL,
    ring_count     integer NOT NULL,
    PRIMARY KEY (tenant_id, day, direction, dest_country, dest_kind, dest_prefix)
) WITH (fillfactor = 85);

CREATE TABLE agg_cause_hour (
    tenant_id      bigint NOT NULL,
    hour           timestamptz NOT NULL,
    switch_id      bigint NOT NULL,
    direction      text NOT NULL,
    disposition    text NOT NULL,
    hangup_cause   integer NOT NULL,
    sip_code       integer NOT NULL,
    calls          integer NOT NULL,
    billsec_sum    bigint NOT NULL,
    PRIMARY KEY (tenant_id, hour, switch_id, direction, disposition, hangup_cause, sip_code)
) WITH (fillfactor = 85);

CREATE TABLE agg_cause_day (
    tenant_id      bigint NOT NULL,
    day            date NOT NULL,
    switch_id      bigint NOT NULL,
    direction      text NOT NULL,
    disposition    text NOT NULL,
    hangup_cause   integer NOT NULL,
    sip_code       integer NOT NULL,
    calls          integer NOT NULL,
    billsec_sum    bigint NOT NULL,
    PRIMARY KEY (tenant_id, day, switch_id, direction, disposition, hangup_cause, sip_code)
) WITH (fillfactor = 85);

CREATE TABLE agg_trunk_hour (
    tenant_id      bigint NOT NULL,
    hour           timestamptz NOT NULL,
    switch_id      bigint NOT NULL,
    direction      text NOT NULL,
    trunk          text NOT NULL,
    calls          integer NOT NULL,
    answered       integer NOT NULL,
    busy           integer NOT NULL,
    no_answer      integer NOT NULL,
    failed         integer NOT NULL,
    cancelled      integer NOT NULL,
    ner_ok         integer NOT NULL,
    duration_sum   bigint NOT NULL,
    billsec_sum    bigint NOT NULL,
    ring_time_sum  bigint NOT NULL,
    ring_count     integer NOT NULL,
    PRIMARY KEY (tenant_id, hour, switch_id, direction, trunk)
) WITH (fillfactor = 85);

CREATE TABLE agg_trunk_day (
    tenant_id      bigint NOT NULL,
    day            date NOT NULL,
    switch_id      bigint NOT NULL,
    direction      text NOT NULL,
    trunk          text NOT NULL,
    calls          integer NOT NULL,
    answered       integer NOT NULL,
    busy           integer NOT NULL,
    no_answer      integer NOT NULL,
    failed         integer NOT NULL,
    cancelled      integer NOT NULL,
    ner_ok         integer NOT NULL,
    duration_sum   bigint NOT NULL,
    billsec_sum    bigint NOT NULL,
    ring_time_sum  bigint NOT NULL,
    ring_count     integer NOT NULL,
    PRIMARY KEY (tenant_id, day, switch_id, direction, trunk)
) WITH (fillfactor = 85);

CREATE TABLE agg_conc_minute (
    tenant_id   bigint NOT NULL,
    switch_id   bigint NOT NULL,      -- 0: all switches of the tenant
    minute      timestamptz NOT NULL,
    calls       integer NOT NULL,
    PRIMARY KEY (tenant_id, switch_id, minute)
) WITH (fillfactor = 85);

CREATE TABLE agg_conc_hour (
    tenant_id   bigint NOT NULL,
    switch_id   bigint NOT NULL,      -- 0: all switches of the tenant
    hour        timestamptz NOT NULL,
    peak        integer NOT NULL,
    PRIMARY KEY (tenant_id, switch_id, hour)
) WITH (fillfactor = 85);

CREATE TABLE agg_conc_day (
    tenant_id   bigint NOT NULL,
    switch_id   bigint NOT NULL,      -- 0: all switches of the tenant
    day         date NOT NULL,
    peak        integer NOT NULL,
    PRIMARY KEY (tenant_id, switch_id, day)
) WITH (fillfactor = 85);
