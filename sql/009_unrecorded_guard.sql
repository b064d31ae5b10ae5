-- A transactional child's guard (one database): its statement is sent in the same write as `begin` and this check
-- (pipelined, src/services/children/runner.ts), so the check must stop it rather than answer: it raises SQLSTATE
-- L2F02 when the step already has its memo for this attempt (an earlier invocation committed it), and L2F01 (sql/008)
-- when this process no longer owns the run. Either error aborts the transaction before the child's statement runs:
-- PostgreSQL refuses every statement of an aborted transaction.
create or replace function l2flow.assert_unrecorded(p_run_id text, p_step text, p_attempt integer, p_owner text) returns boolean
language plpgsql stable as $$
begin
  perform l2flow.assert_owner(p_run_id, p_owner);
  if exists (select 1 from l2flow.step_memo where run_id = p_run_id and step = p_step and attempt = p_attempt) then
    raise exception 'step % of run % (attempt %) is already recorded', p_step, p_run_id, p_attempt
      using errcode = 'L2F02', hint = 'its recorded output is the result; the step does not run again';
  end if;
  return true;
end $$;
