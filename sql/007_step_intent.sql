-- Exactly once when l2flow's tables live in a database other than the warehouse (connection id `state`): a step's
-- warehouse transaction records here, before it commits, its transaction id and its output. Whoever finds an intent
-- without a memo asks the warehouse txid_status(dwh_xid): committed → the memo is written from `output`; aborted →
-- the intent is deleted and the step runs again (src/services/db/step-memo.ts). Empty when state = warehouse.
create table if not exists l2flow.step_intent (
  run_id      text not null,
  step        text not null,
  attempt     integer not null,
  dwh_xid     bigint not null,
  output      jsonb not null default '{}'::jsonb,
  created_at  timestamptz not null default now(),
  primary key (run_id, step, attempt)
);
