-- Schedules (schedule.cron, schedule.onFlag). A run is still keyed (workflow_id, logical_date), so creating one
-- twice is harmless; these tables make a leader change neither skip nor double a date, and no skipped date silent.

-- Where the cron schedule got to: the last logical date it decided (created, found existing, or skipped). Updated in
-- the same transaction as the runs and skips of that decision, so a new leader continues exactly from here.
create table if not exists l2flow.schedule_state (
  workflow_id        text not null,
  schedule           text not null,
  last_logical_date  date not null,
  updated_at         timestamptz not null default now(),
  primary key (workflow_id, schedule)
);

-- Dates a schedule was due to create and deliberately did not: 'catchup_false' (a later date was due at the same
-- time and catchup is off; typically the process was down) or 'disabled' (schedule.cron.enabled is false). A
-- date that got a run later (trigger, onFlag) keeps its row; readers exclude dates that have a run.
create table if not exists l2flow.skipped_date (
  workflow_id   text not null,
  logical_date  date not null,
  schedule      text not null,
  reason        text not null check (reason in ('catchup_false', 'disabled')),
  recorded_at   timestamptz not null default now(),
  primary key (workflow_id, logical_date)
);

-- Who created a run: 'flag' joins 'manual' and 'scheduled' (the column has no constraint; documented here).
comment on column l2flow.run.triggered_by is 'manual (l2flow trigger), scheduled (schedule.cron), flag (schedule.onFlag)';
