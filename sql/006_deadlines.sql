-- Notices besides the failure mail: 'late' (an expected-by deadline passed), 'recovered' (a late run succeeded),
-- 'blocked' (a run waited too long behind a failed predecessor). The unique key is the deduplication: every
-- replica may try to queue the same notice, and a restart may try again; only the first insert counts.
-- `step` is '' for notices about the whole run, else the step whose own deadline passed.
alter table l2flow.email_outbox add column if not exists kind text not null default 'failure';
alter table l2flow.email_outbox add column if not exists step text not null default '';
alter table l2flow.email_outbox drop constraint if exists email_outbox_kind_check;
alter table l2flow.email_outbox add constraint email_outbox_kind_check
  check (kind in ('failure', 'late', 'recovered', 'blocked'));
alter table l2flow.email_outbox drop constraint if exists email_outbox_run_id_attempt_key;
create unique index if not exists email_outbox_notice_key on l2flow.email_outbox (run_id, attempt, kind, step);

-- The last check of every key a sensor waits on (flag sensor: the business date; previous-run sensor:
-- 'YYYY-MM-DD:workflow'), so `l2flow status` can say when the condition was last looked at. One upsert per
-- batched check, whatever the number of keys. `polled_at` is the last fallback poll (or the first check):
-- the next poll is due one poke interval after it.
create table if not exists l2flow.sensor_check (
  sensor         text not null,
  key            text not null,
  checked_at     timestamptz not null,
  polled_at      timestamptz,
  ok             boolean not null,
  primary key (sensor, key)
);

-- The deadline watch looks for late runs that succeeded since, on every round: find late notices by index.
create index if not exists email_outbox_late_idx on l2flow.email_outbox (run_id, attempt) where kind = 'late';
