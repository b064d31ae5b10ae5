-- Per-step retries and cleared runs (clear, mark).
-- Every try of a step is a row of its own, with its error: the key gains the try number. retry_at is when a
-- failed try is tried again (null once it was, or when it is not retried).
alter table l2flow.step drop constraint if exists step_pkey;
alter table l2flow.step add primary key (run_id, step, attempt, try_number);
alter table l2flow.step add column if not exists retry_at timestamptz;

-- A cleared run's new attempt starts in these steps (src/machines/clear-plan.ts); null: at the first step.
alter table l2flow.run add column if not exists start_at text[];

-- Who did what to which runs, and why: every trigger, cancel, clear and mark, from the CLI or the API.
create table if not exists l2flow.audit (
  id             bigserial primary key,
  at             timestamptz not null default now(),
  action         text not null check (action in ('trigger', 'cancel', 'clear', 'mark')),
  workflow_id    text not null,
  logical_dates  date[] not null,
  run_ids        text[] not null,
  reason         text,
  -- The OS user for the CLI; the API's caller names itself (its token's name, later).
  actor          text not null,
  details        jsonb not null default '{}'::jsonb
);
create index if not exists audit_dates_idx on l2flow.audit using gin (logical_dates);
