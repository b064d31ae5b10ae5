-- The error a 'failed' SAP send ended with ({code, message, details}), so a step resumed for the same
-- Idempotency-Key fails again with it instead of repeating a request SAP already refused. Rows failed before
-- this migration have none; the sender rebuilds their error from http_status and response_excerpt.
alter table l2flow.sap_send add column if not exists error jsonb;
