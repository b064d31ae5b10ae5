import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { createMetadata, type Metadata } from '../../src/services/metadata.js';
import type { StepContext } from '../../src/services/types.js';

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const signal = new AbortController().signal;

describe('warehouse metadata steps', () => {
  let db: TestDb;
  let md: Metadata;
  beforeAll(async () => {
    db = await createTestDb();
    md = createMetadata({ pool: db.pool, dwh: db.pool, logger: pino({ level: 'silent' }), logUrl: (c) => `http://l2flow/runs/${c.runId}` });
  });
  afterAll(async () => { await db.drop(); });

  async function newRun(runId: string, logicalDate: string, businessDate: string): Promise<StepContext> {
    await db.pool.query(
      'insert into l2flow.run (run_id, workflow_id, logical_date, business_date) values ($1, $2, $3, $4)',
      [runId, WF, logicalDate, businessDate],
    );
    const ctx: StepContext = { runId, workflowId: WF, logicalDate, businessDate, attempt: 1, loadId: null };
    return { ...ctx, loadId: (await md.getLoadId(ctx, signal)).loadId };
  }

  async function counts(loadId: number) {
    const { rows } = await db.pool.query(
      `select (select count(*)::int from md.workflow) as workflows,
              (select count(*)::int from md.data_load_session where load_id = $1) as sessions,
              (select count(*)::int from md.job_session where load_id = $1) as jobs,
              (select count(*)::int from md.session_log where load_id = $1) as logs`,
      [loadId],
    );
    return rows[0];
  }

  it('assigns a load id once and keeps it when the step is re-invoked', async () => {
    const ctx = await newRun('r-load', '2024-03-02', '2024-03-01');
    const again = await md.getLoadId({ ...ctx, loadId: null }, signal);
    expect(again.loadId).toBe(ctx.loadId);
    const other = await newRun('r-load-2', '2024-03-03', '2024-03-02');
    expect(other.loadId).not.toBe(ctx.loadId);
  });

  it('fails with INTERNAL naming the run when the run row is missing', async () => {
    const ctx: StepContext = { runId: 'no-such-run', workflowId: WF, logicalDate: '2024-01-02', businessDate: '2024-01-01', attempt: 1, loadId: null };
    await expect(md.getLoadId(ctx, signal)).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringContaining('no-such-run') });
  });

  it('registers, then ends, each exactly once however often re-invoked', async () => {
    const ctx = await newRun('r-ok', '2024-04-02', '2024-04-01');
    const loadId = ctx.loadId!;
    const first = await md.workflowRegistration(ctx, signal);
    const second = await md.workflowRegistration(ctx, signal);
    expect(first).toEqual({ loadId, workflowRegistered: true, resumed: false });
    expect(second).toEqual({ loadId, workflowRegistered: true, resumed: true });
    expect(await counts(loadId)).toEqual({ workflows: 1, sessions: 1, jobs: 1, logs: 1 });
    const session = await db.pool.query('select business_date::text, layer_cd, status_cd from md.data_load_session where load_id = $1', [loadId]);
    expect(session.rows).toEqual([{ business_date: '2024-04-01', layer_cd: 'l2', status_cd: 'start' }]);
    const job = await db.pool.query('select run_id, workflow_cd, status_cd from md.job_session where load_id = $1', [loadId]);
    expect(job.rows).toEqual([{ run_id: 'r-ok', workflow_cd: WF, status_cd: 'start' }]);

    expect((await md.end(ctx, signal)).resumed).toBe(false);
    expect((await md.end(ctx, signal)).resumed).toBe(true);
    expect(await counts(loadId)).toEqual({ workflows: 1, sessions: 1, jobs: 1, logs: 2 });
    const closed = await db.pool.query(
      `select s.status_cd as s, j.status_cd as j, s.finished_at is not null and j.finished_at is not null as finished
         from md.data_load_session s join md.job_session j using (load_id) where load_id = $1`, [loadId]);
    expect(closed.rows).toEqual([{ s: 's', j: 's', finished: true }]);
    const log = await db.pool.query('select level_cd, message from md.session_log where load_id = $1 order by log_id', [loadId]);
    expect(log.rows).toEqual([
      { level_cd: 'i', message: `start -> task_id=workflow_registration, dag_id=${WF}, log_url=http://l2flow/runs/r-ok` },
      { level_cd: 'i', message: `successful -> task_id=end, dag_id=${WF}, log_url=http://l2flow/runs/r-ok` },
    ]);
  });

  it('does not register the workflow twice across runs, and reopens the session on a new attempt', async () => {
    const ctx = await newRun('r-second', '2024-04-03', '2024-04-02');
    expect((await md.workflowRegistration(ctx, signal)).workflowRegistered).toBe(false);
    await md.end(ctx, signal);
    const retry = { ...ctx, attempt: 2 };
    expect((await md.workflowRegistration(retry, signal)).resumed).toBe(false);
    const { rows } = await db.pool.query('select status_cd, finished_at from md.data_load_session where load_id = $1', [ctx.loadId]);
    expect(rows).toEqual([{ status_cd: 'start', finished_at: null }]);
    expect(await counts(ctx.loadId!)).toMatchObject({ workflows: 1, sessions: 1, jobs: 1, logs: 3 });
  });

  it('records a failure once, and nothing when the run failed before it had a load id', async () => {
    const failure = { step: 'run_sys_kill_all_session_pg', code: 'CHILD_FAILED', message: 'boom' };
    const before = await db.pool.query('select count(*)::int as n from md.session_log');
    const early = { runId: 'r-early', workflowId: WF, logicalDate: '2024-05-02', businessDate: '2024-05-01', attempt: 1, loadId: null };
    expect(await md.recordFailure({ ...early, failure }, signal)).toEqual({ recorded: false, resumed: false });
    expect((await db.pool.query('select count(*)::int as n from md.session_log')).rows).toEqual(before.rows);

    const ctx = await newRun('r-fail', '2024-05-03', '2024-05-02');
    await md.workflowRegistration(ctx, signal);
    expect(await md.recordFailure({ ...ctx, failure }, signal)).toEqual({ recorded: true, resumed: false });
    expect(await md.recordFailure({ ...ctx, failure }, signal)).toEqual({ recorded: true, resumed: true });
    expect(await counts(ctx.loadId!)).toMatchObject({ sessions: 1, jobs: 1, logs: 2 });
    const { rows } = await db.pool.query(
      `select s.status_cd as s, j.status_cd as j, s.finished_at is not null as finished,
              (select message from md.session_log l where l.load_id = s.load_id and level_cd = 'e') as message
         from md.data_load_session s join md.job_session j using (load_id) where load_id = $1`, [ctx.loadId]);
    expect(rows).toEqual([{ s: 'f', j: 'f', finished: true,
      message: `failed -> task_id=run_sys_kill_all_session_pg, dag_id=${WF}, error=CHILD_FAILED: boom` }]);
  });

  it('refuses to start when aborted, and without a load id', async () => {
    const ctx = { runId: 'r-x', workflowId: WF, logicalDate: '2024-06-02', businessDate: '2024-06-01', attempt: 1, loadId: null };
    const ac = new AbortController();
    ac.abort();
    await expect(md.getLoadId(ctx, ac.signal)).rejects.toMatchObject({ code: 'ABORTED' });
    await expect(md.end(ctx, signal)).rejects.toMatchObject({ code: 'INTERNAL', message: expect.stringContaining('get_load_id') });
  });

  /** The statements `fn` sends on any connection of this process, in order (pg's client query, wrapped for the call). */
  async function statementsOf<T>(fn: () => Promise<T>): Promise<{ result: T; sent: string[] }> {
    const spy = vi.spyOn(pg.Client.prototype, 'query');
    try {
      const result = await fn();
      const sent = spy.mock.calls.map(([q]) => (typeof q === 'string' ? q : (q as { text: string }).text).replace(/\s+/g, ' ').trim());
      return { result, sent };
    } finally {
      spy.mockRestore();
    }
  }

  it('a memoized step is one statement, fresh or resumed; resumed, it writes no md row again', async () => {
    const ctx = await newRun('r-one', '2024-07-02', '2024-07-01');
    const loadId = ctx.loadId!;
    const fresh = await statementsOf(() => md.workflowRegistration(ctx, signal));
    expect(fresh.result).toEqual({ loadId, workflowRegistered: false, resumed: false });
    expect(fresh.sent).toHaveLength(1);
    expect(fresh.sent[0]).toMatch(/insert into l2flow\.step_memo/);
    const again = await statementsOf(() => md.workflowRegistration(ctx, signal));
    expect(again.result).toEqual({ loadId, workflowRegistered: false, resumed: true });
    expect(again.sent).toHaveLength(1);
    expect(await counts(loadId)).toMatchObject({ sessions: 1, jobs: 1, logs: 1 });

    const ended = await statementsOf(() => md.end(ctx, signal));
    expect(ended.result).toEqual({ loadId, flagged: false, resumed: false });
    expect(ended.sent).toHaveLength(1);
    // Resumed after end: the registration's writes (reopening the session) are not done again.
    expect(await md.workflowRegistration(ctx, signal)).toMatchObject({ resumed: true });
    const closed = await db.pool.query('select status_cd, finished_at is not null as finished from md.data_load_session where load_id = $1', [loadId]);
    expect(closed.rows).toEqual([{ status_cd: 's', finished: true }]);
    const failure = { step: 'end', code: 'DB_ERROR', message: 'late' };
    expect((await statementsOf(() => md.recordFailure({ ...ctx, failure }, signal))).sent).toHaveLength(1);
    expect(await counts(loadId)).toMatchObject({ sessions: 1, jobs: 1, logs: 3 });
  });

  it('end writes the completion flag in its one statement, once per business date, and not again when resumed', async () => {
    const flagging = createMetadata({ pool: db.pool, dwh: db.pool, logger: pino({ level: 'silent' }),
      completionFlag: { flagTable: 'md.dwh_flag', flagCode: 'L2_DONE' } });
    const flags = async () => (await db.pool.query(`select count(*)::int as n from md.dwh_flag where flag_cd = 'L2_DONE' and bussines_date = '2024-08-01'`)).rows[0].n;
    const ctx = await newRun('r-flag', '2024-08-02', '2024-08-01');
    await flagging.workflowRegistration(ctx, signal);
    const first = await statementsOf(() => flagging.end(ctx, signal));
    expect(first.result).toEqual({ loadId: ctx.loadId, flagged: true, resumed: false });
    expect(first.sent).toHaveLength(1);
    expect(await flags()).toBe(1);
    expect(await flagging.end(ctx, signal)).toEqual({ loadId: ctx.loadId, flagged: true, resumed: true });
    // A second run of the same business date (a new attempt) finds the flag there: not written twice.
    expect(await flagging.end({ ...ctx, attempt: 2 }, signal)).toEqual({ loadId: ctx.loadId, flagged: false, resumed: false });
    expect(await flags()).toBe(1);
    const { rows } = await db.pool.query(`select status_cd, finished_at is not null as finished from md.data_load_session where load_id = $1`, [ctx.loadId]);
    expect(rows).toEqual([{ status_cd: 's', finished: true }]);
  });

  it('two invocations of a step at once: one writes, the other returns its recorded output; md rows once', async () => {
    const ctx = await newRun('r-race', '2024-09-02', '2024-09-01');
    const both = await Promise.all([md.workflowRegistration(ctx, signal), md.workflowRegistration(ctx, signal)]);
    expect(both.map((r) => r.resumed).sort()).toEqual([false, true]);
    expect(both[0].workflowRegistered).toBe(both[1].workflowRegistered);
    expect(await counts(ctx.loadId!)).toMatchObject({ sessions: 1, jobs: 1, logs: 1 });
  });
});
