-- Run once by the postgres image on an empty data directory (docker-compose.yml): the warehouse objects l2flow
-- reads but does not own. l2flow's own tables, the md schema and the flag trigger come from `l2flow migrate`.
create schema if not exists wk_export;
-- send_flg_to_sap counts this view's rows into its payload (sap.viewName); a real warehouse has its own.
create or replace view wk_export.ds_client_segmentation_last_v as
  select g as client_id, 'demo' as segment from generate_series(1, 3) g;
