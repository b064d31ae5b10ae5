import type pg from 'pg';
import { quoteQualified } from '../../services/db/index.js';

/**
 * The demo warehouse, installed after `migrate` (which creates the md tables): a few sample clients behind the view
 * send_flg_to_sap counts, and two procedures standing in for the child workflows (config/demo.yaml calls them). They
 * sleep a little and write a row, so a run visibly takes a few seconds and leaves a trace. Safe to repeat.
 */
const DEMO_WAREHOUSE_SQL = `
create schema if not exists demo;
create schema if not exists wk_export;
create table if not exists demo.client_segmentation (
  logical_date date not null,
  load_id      bigint not null,
  client_id    int not null,
  segment      text not null,
  primary key (logical_date, client_id)
);
create table if not exists demo.report_run (
  logical_date date not null,
  load_id      bigint not null,
  prepared_at  timestamptz not null default clock_timestamp()
);
-- The sample rows the view shows before any run has loaded a date.
insert into demo.client_segmentation (logical_date, load_id, client_id, segment)
  select date '2000-01-01', 0, g, (array['retail', 'sme', 'corporate'])[1 + g % 3] from generate_series(1, 5) g
  on conflict do nothing;
create or replace view wk_export.ds_client_segmentation_last_v as
  select client_id, segment, logical_date, load_id from demo.client_segmentation
  where logical_date = (select max(logical_date) from demo.client_segmentation);
create or replace procedure demo.prepare_reports(d date, load_id bigint) language plpgsql as $$
begin
  perform pg_sleep(1.5);
  insert into demo.report_run (logical_date, load_id) values (d, load_id);
end $$;
create or replace procedure demo.load_client_segmentation(d date, load_id bigint) language plpgsql as $$
begin
  perform pg_sleep(2);
  insert into demo.client_segmentation (logical_date, load_id, client_id, segment)
    select d, load_id, g, (array['retail', 'sme', 'corporate'])[1 + (g + extract(day from d)::int) % 3] from generate_series(1, 5 + extract(day from d)::int % 4) g
    on conflict (logical_date, client_id) do update set load_id = excluded.load_id, segment = excluded.segment;
end $$;
`;

/** Create (or refresh) the demo's warehouse objects. */
export async function installDemoWarehouse(pool: pg.Pool): Promise<void> {
  await pool.query(DEMO_WAREHOUSE_SQL);
}

/**
 * Insert the upstream flag for a business date, as the L1 load does when it finishes; nothing if it is there.
 * Resolves true when a row was inserted.
 */
export async function insertFlag(pool: pg.Pool, flag: { table: string; code: string }, businessDate: string): Promise<boolean> {
  const table = quoteQualified(flag.table);
  const { rowCount } = await pool.query(
    `insert into ${table} (flag_cd, bussines_date) select $1, $2::date
     where not exists (select 1 from ${table} where flag_cd = $1 and bussines_date = $2::date)`,
    [flag.code, businessDate],
  );
  return (rowCount ?? 0) > 0;
}
