-- l2flow's own state: one row per logical date, step history, step memos, SAP sends and the failure-mail outbox.
create table if not exists l2flow.run (
  run_id            text primary key,
  workflow_id       text not null,
  logical_date      date not null,
  business_date     date not null,
  status            text not null default 'queued'
                    check (status in ('queued', 'running', 'success', 'failed', 'cancelled')),
  attempt           integer not null default 1 check (attempt >= 1),
  load_id           bigint,
  current_step      text,
  error             jsonb,
  snapshot          jsonb,
  snapshot_version  bigint not null default 0,
  owner             text,
  triggered_by      text not null default 'manual',
  created_at        timestamptz not null default now(),
  started_at        timestamptz,
  finished_at       timestamptz,
  updated_at        timestamptz not null default now(),
  unique (workflow_id, logical_date)
);
create index if not exists run_unfinished_idx on l2flow.run (workflow_id, logical_date)
  where status in ('queued', 'running');

-- Step history: one row per step and run attempt, with timestamps and the try number within the attempt.
create table if not exists l2flow.step (
  run_id       text not null references l2flow.run (run_id) on delete cascade,
  step         text not null,
  attempt      integer not null,
  try_number   integer not null default 1,
  status       text not null check (status in ('running', 'success', 'failed', 'cancelled')),
  started_at   timestamptz not null,
  finished_at  timestamptz,
  error        jsonb,
  primary key (run_id, step, attempt)
);

-- Step memo: a step that writes to the database records its output in the same transaction, so a step
-- re-invoked after a crash returns the recorded output instead of doing the work again.
create table if not exists l2flow.step_memo (
  run_id      text not null,
  step        text not null,
  attempt     integer not null,
  output      jsonb not null default '{}'::jsonb,
  created_at  timestamptz not null default now(),
  primary key (run_id, step, attempt)
);

-- Every readiness POST to SAP, keyed by its Idempotency-Key; the payload is fixed on the first try so a
-- resumed run sends the same body.
create table if not exists l2flow.sap_send (
  idempotency_key   text primary key,
  run_id            text not null,
  logical_date      date not null,
  load_id           bigint not null,
  payload           jsonb not null,
  status            text not null check (status in ('sending', 'sent', 'failed')),
  tries             integer not null default 0,
  http_status       integer,
  response_excerpt  text,
  created_at        timestamptz not null default now(),
  sent_at           timestamptz
);

-- Failure mail outbox: written by the run, delivered with retries by the dispatcher.
create table if not exists l2flow.email_outbox (
  id               bigserial primary key,
  run_id           text not null,
  attempt          integer not null,
  recipients       text[] not null,
  subject          text not null,
  text_body        text not null,
  html_body        text not null,
  status           text not null default 'pending' check (status in ('pending', 'sent', 'dead')),
  tries            integer not null default 0,
  next_attempt_at  timestamptz not null default now(),
  last_error       text,
  created_at       timestamptz not null default now(),
  sent_at          timestamptz,
  unique (run_id, attempt)
);

-- Every change of a run's status or step is announced on channel l2flow_run: sensors waiting for a previous
-- run, supervisors waiting for queued runs and dashboards follow it. Committed transactions only.
create or replace function l2flow.notify_run_change() returns trigger
language plpgsql as $$
begin
  perform pg_notify('l2flow_run', json_build_object(
    'run_id', new.run_id,
    'workflow_id', new.workflow_id,
    'logical_date', new.logical_date,
    'status', new.status,
    'current_step', new.current_step)::text);
  return null;
end $$;

drop trigger if exists run_change_notify on l2flow.run;
create trigger run_change_notify
  after insert or update of status, current_step on l2flow.run
  for each row execute function l2flow.notify_run_change();

-- Generic flag notifier: installed on the configured flag table by `l2flow migrate`.
create or replace function l2flow.notify_dwh_flag() returns trigger
language plpgsql as $$
begin
  perform pg_notify('l2flow_dwh_flag', json_build_object(
    'flag_cd', new.flag_cd,
    'business_date', new.bussines_date)::text);
  return null;
end $$;

create or replace view l2flow.runs as
  select logical_date, status, load_id, current_step, started_at, finished_at,
         error ->> 'message' as error, workflow_id, run_id, attempt, business_date
    from l2flow.run;
