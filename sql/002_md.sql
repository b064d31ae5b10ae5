-- target: warehouse
-- The warehouse metadata schema. Real warehouses already have these tables: create only what is missing,
-- never alter or drop an existing one.
create schema if not exists md;

create table if not exists md.dwh_flag (
  flag_cd        text not null,
  bussines_date  date not null,
  created_at     timestamptz not null default now()
);
create index if not exists dwh_flag_cd_date_idx on md.dwh_flag (flag_cd, bussines_date);

create sequence if not exists md.load_id_seq;

create table if not exists md.workflow (
  workflow_cd    text primary key,
  layer_cd       text not null,
  registered_at  timestamptz not null default now()
);

create table if not exists md.data_load_session (
  load_id        bigint primary key,
  business_date  date not null,
  layer_cd       text not null,
  status_cd      text not null,
  started_at     timestamptz not null default now(),
  finished_at    timestamptz
);

create table if not exists md.job_session (
  load_id      bigint not null,
  run_id       text not null,
  workflow_cd  text not null,
  status_cd    text not null,
  started_at   timestamptz not null default now(),
  finished_at  timestamptz,
  primary key (load_id, workflow_cd)
);

create table if not exists md.session_log (
  log_id     bigserial primary key,
  load_id    bigint not null,
  level_cd   text not null,
  message    text not null,
  logged_at  timestamptz not null default now()
);
