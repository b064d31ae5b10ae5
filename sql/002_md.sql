-- target: warehouse
-- The warehouse metadata schema. Real warehouses already have these tables: create only what is missing,
-- never alter or drop an existing one.
-- Not `create schema / index if not exists`: they need CREATE on the database (the table's ownership) even when the
-- object exists, which a warehouse l2flow does not own rarely grants; with a separate state database this file is
-- applied at every migrate.
do $$ begin
  if not exists (select 1 from pg_namespace where nspname = 'md') then create schema md; end if;
end $$;

create table if not exists md.dwh_flag (
  flag_cd        text not null,
  bussines_date  date not null,
  created_at     timestamptz not null default now()
);
do $$ begin
  if to_regclass('md.dwh_flag_cd_date_idx') is null then create index dwh_flag_cd_date_idx on md.dwh_flag (flag_cd, bussines_date); end if;
end $$;

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
