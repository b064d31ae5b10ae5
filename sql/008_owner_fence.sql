-- The fence of a run's side effects: a statement that records a step (its memo, its intent, the SAP send record,
-- the load id) also asks l2flow.assert_owner(run, owner), so a process whose run was taken over by another (its
-- lock connection broke, another process claimed the run) has every write refused and rolled back in the very
-- statement that would have made it, whatever its snapshot writes have or have not told it yet.
-- A null owner asserts nothing (tools and tests that call services outside a runtime).
-- Stable: evaluated once per statement when it reads no row of the query (a one-time filter).
create or replace function l2flow.assert_owner(p_run_id text, p_owner text) returns boolean
language plpgsql stable as $$
declare
  current_owner text;
begin
  if p_owner is null then
    return true;
  end if;
  select owner into current_owner from l2flow.run where run_id = p_run_id;
  if current_owner is distinct from p_owner then
    raise exception 'run % is executed by %, not by this process (%): it was taken over', p_run_id, coalesce(current_owner, 'no process'), p_owner
      using errcode = 'L2F01', hint = 'the process that owns the run now executes it; this one stops';
  end if;
  return true;
end $$;
