import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import pg from 'pg';
import { createSplitTestDbs, createTestDb, type SplitDbs, type TestDb } from '../helpers/db.js';
import pino from 'pino';
import { createDedicatedConnections, memoized, readMemo, type Databases, type DedicatedConnections } from '../../src/services/db/index.js';
import { createChildRunner, type ChildRunner } from '../../src/services/children/index.js';
import { createMetadata } from '../../src/services/metadata.js';

/**
 * Exactly once across two databases: the crash windows of the intent protocol (src/services/db/step-memo.ts),
 * staged by hand at the exact moment a crash would leave them, then the step invoked again as a resumed run would.
 */

const STEP = 'workflow_registration';
let n = 0;
/** A fresh run key per test: memos and intents of one test never meet another's. */
const key = () => ({ runId: `intent-${++n}`, attempt: 1 });

/** The warehouse side effect of the step: one md row per execution. */
const work = (ctx: { runId: string }) => async (c: pg.PoolClient) => {
  await c.query(`insert into md.session_log (load_id, level_cd, message) values (1, 'i', $1)`, [ctx.runId]);
  return { loadId: 1, wrote: ctx.runId };
};

const effects = async (db: Databases, runId: string) =>
  (await db.dwh.query<{ n: number }>('select count(*)::int as n from md.session_log where message = $1', [runId])).rows[0]!.n;
const intents = async (db: Databases, runId: string) =>
  (await db.state.query<{ n: number }>('select count(*)::int as n from l2flow.step_intent where run_id = $1', [runId])).rows[0]!.n;

/**
 * The state a crash between "intent committed" and "memo written" leaves: the warehouse transaction did the work and
 * wrote its intent; it is then committed (`end: 'commit'`), rolled back, or left open (`'open'`, returned).
 */
async function stageIntent(db: Databases, ctx: { runId: string; attempt: number }, end: 'commit' | 'rollback' | 'open'): Promise<pg.PoolClient> {
  const c = await db.dwh.connect();
  await c.query('begin');
  const output = await work(ctx)(c);
  const xid = (await c.query<{ x: string }>('select txid_current()::text as x')).rows[0]!.x;
  await db.state.query('insert into l2flow.step_intent (run_id, step, attempt, dwh_xid, output) values ($1, $2, $3, $4, $5)',
    [ctx.runId, STEP, ctx.attempt, xid, JSON.stringify(output)]);
  if (end !== 'open') {
    await c.query(end);
    c.release();
  }
  return c;
}

describe('step memos with a separate state database', () => {
  let split: SplitDbs;
  beforeAll(async () => { split = await createSplitTestDbs(); });
  afterAll(async () => { await split.drop(); });

  it('runs the work once, leaves a memo in the state database and no intent behind', async () => {
    const ctx = key();
    const first = await memoized(split.db, ctx, STEP, work(ctx));
    const again = await memoized(split.db, ctx, STEP, work(ctx));
    expect(first).toEqual({ output: { loadId: 1, wrote: ctx.runId }, resumed: false });
    expect(again).toEqual({ output: { loadId: 1, wrote: ctx.runId }, resumed: true });
    expect(await effects(split.db, ctx.runId)).toBe(1);
    expect(await intents(split.db, ctx.runId)).toBe(0);
    expect(await readMemo(split.db.state, ctx, STEP)).toEqual({ loadId: 1, wrote: ctx.runId });
  });

  it('a metadata step: its md writes are one statement in the intent transaction, the memo and intent one read', async () => {
    const md = createMetadata({ pool: split.db.state, dwh: split.db.dwh, logger: pino({ level: 'silent' }) });
    const run = { runId: 'intent-md', workflowId: 'WF', logicalDate: '2024-03-02', businessDate: '2024-03-01', attempt: 1, loadId: null };
    await split.db.state.query('insert into l2flow.run (run_id, workflow_id, logical_date, business_date) values ($1, $2, $3, $4)',
      [run.runId, run.workflowId, run.logicalDate, run.businessDate]);
    const ctx = { ...run, loadId: (await md.getLoadId(run, new AbortController().signal)).loadId };
    const sent = async (fn: () => Promise<unknown>) => {
      const spy = vi.spyOn(pg.Client.prototype, 'query');
      try {
        await fn();
        return spy.mock.calls.map(([q]) => (typeof q === 'string' ? q : (q as { text: string }).text).replace(/\s+/g, ' ').slice(0, 24));
      } finally {
        spy.mockRestore();
      }
    };
    const signal = new AbortController().signal;
    // The memo-or-intent read, BEGIN with the xid, the md writes, the intent, COMMIT, the intent made the memo.
    expect(await sent(() => md.workflowRegistration(ctx, signal))).toEqual([
      'select m.output as memo,', 'begin; select txid_curre', 'with l2flow_recorded as ', 'insert into l2flow.step_', 'commit', 'with gone as (delete fro',
    ]);
    expect(await sent(() => md.workflowRegistration(ctx, signal))).toEqual(['select m.output as memo,']);
    const { rows } = await split.db.dwh.query(`select (select count(*)::int from md.data_load_session where load_id = $1) as sessions,
      (select count(*)::int from md.session_log where load_id = $1 and message like 'start -> task_id=workflow_registration%') as logs`, [ctx.loadId]);
    expect(rows).toEqual([{ sessions: 1, logs: 1 }]);
    expect(await intents(split.db, ctx.runId)).toBe(0);
  });

  it('(a) intent written, warehouse committed, memo not yet written: the step is resumed, not repeated', async () => {
    const ctx = key();
    await stageIntent(split.db, ctx, 'commit');
    const r = await memoized(split.db, ctx, STEP, work(ctx));
    expect(r).toEqual({ output: { loadId: 1, wrote: ctx.runId }, resumed: true });
    expect(await effects(split.db, ctx.runId)).toBe(1);
    expect(await intents(split.db, ctx.runId)).toBe(0);
    expect(await readMemo(split.db.state, ctx, STEP)).toEqual({ loadId: 1, wrote: ctx.runId });
  });

  it('(b) intent written, warehouse transaction rolled back: the step runs again, once', async () => {
    const ctx = key();
    await stageIntent(split.db, ctx, 'rollback');
    expect(await effects(split.db, ctx.runId)).toBe(0);
    const r = await memoized(split.db, ctx, STEP, work(ctx));
    expect(r.resumed).toBe(false);
    expect(await effects(split.db, ctx.runId)).toBe(1);
    expect(await intents(split.db, ctx.runId)).toBe(0);
  });

  it('(b) intent written, warehouse session killed before its commit: the step runs again, once', async () => {
    const ctx = key();
    const open = await stageIntent(split.db, ctx, 'open');
    const pid = (await open.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]!.pid;
    open.on('error', () => undefined);
    await split.db.state.query('select 1'); // (the state database is unaffected)
    await split.dwh.pool.query('select pg_terminate_backend($1)', [pid]);
    open.release(new Error('terminated'));
    const r = await memoized(split.db, ctx, STEP, work(ctx));
    expect(r.resumed).toBe(false);
    expect(await effects(split.db, ctx.runId)).toBe(1);
  });

  it('an intent whose warehouse transaction is still open is waited for: committed meanwhile, the step is resumed', async () => {
    const ctx = key();
    const open = await stageIntent(split.db, ctx, 'open');
    const resumed = memoized(split.db, ctx, STEP, work(ctx));
    // Let the re-invocation find the transaction in progress at least once before it commits.
    await new Promise((r) => setTimeout(r, 300));
    await open.query('commit');
    open.release();
    expect(await resumed).toEqual({ output: { loadId: 1, wrote: ctx.runId }, resumed: true });
    expect(await effects(split.db, ctx.runId)).toBe(1);
  });

  it('still in progress after the bounded wait: a clear error naming the step, the run and the transaction', async () => {
    const ctx = key();
    const open = await stageIntent(split.db, ctx, 'open');
    const xid = (await open.query<{ x: string }>('select txid_current()::text as x')).rows[0]!.x;
    try {
      const err = await memoized(split.db, ctx, STEP, work(ctx), { wait: { maxTries: Infinity, baseDelayMs: 50, maxDelayMs: 50, jitter: 'none', maxElapsedMs: 400 } })
        .then(() => null, (e: Error & { code?: string }) => e);
      expect(err?.code).toBe('DB_ERROR');
      expect(err?.message).toContain(`${STEP} of run ${ctx.runId}`);
      expect(err?.message).toContain(`xid ${xid}`);
      expect(err?.message).toMatch(/still in progress.*clear the step/);
    } finally {
      await open.query('rollback');
      open.release();
    }
    expect(await effects(split.db, ctx.runId)).toBe(0);
  });
});

describe('child workflows with a separate state database', () => {
  let split: SplitDbs;
  let connections: DedicatedConnections;
  let runner: ChildRunner;
  const signal = new AbortController().signal;
  let loadId = 100;
  /** Each test's run has a load id of its own: the child writes it, the test counts by it. */
  const ctx = () => ({ ...key(), workflowId: 'WF', logicalDate: '2024-03-02', businessDate: '2024-03-01', loadId: ++loadId });
  const calls = async (id: number) =>
    (await split.db.dwh.query<{ n: number }>('select count(*)::int as n from child_calls where load_id = $1', [id])).rows[0]!.n;
  beforeAll(async () => {
    split = await createSplitTestDbs();
    await split.db.dwh.query(`create table child_calls (load_id bigint);
      create procedure commits_itself(l bigint) language plpgsql as $$ begin insert into child_calls values (l); commit; end $$;`);
    connections = createDedicatedConnections({ connectionString: split.dwh.uri, max: 2, applicationName: 'l2flow-child' });
    runner = createChildRunner({
      pool: split.db.state, dwh: split.db.dwh, connections, logger: pino({ level: 'silent' }),
      children: {
        tx: { kind: 'sql', statement: 'insert into child_calls values ($2::bigint)', transactional: true },
        committing: { kind: 'sql', statement: 'call commits_itself($2::bigint)', transactional: false },
      },
    });
  });
  afterAll(async () => { await connections.end(); await split.drop(); });

  it('a transactional child: its effect and memo are recorded once; (a) a committed intent resumes it without running it', async () => {
    const done = ctx();
    expect(await runner.run('tx')(done, signal)).toMatchObject({ rowCount: 1, resumed: false });
    expect(await runner.run('tx')(done, signal)).toMatchObject({ rowCount: 1, resumed: true });
    expect(await calls(done.loadId)).toBe(1);
    expect(await readMemo(split.db.state, done, 'child:tx')).toMatchObject({ rowCount: 1 });

    // (a): the warehouse committed the child's effect and its intent is there, the memo is not.
    const c = ctx();
    const w = await split.db.dwh.connect();
    await w.query('begin');
    await w.query('insert into child_calls values ($1)', [c.loadId]);
    const xid = (await w.query<{ x: string }>('select txid_current()::text as x')).rows[0]!.x;
    await split.db.state.query(`insert into l2flow.step_intent (run_id, step, attempt, dwh_xid, output) values ($1, 'child:tx', 1, $2, $3)`,
      [c.runId, xid, JSON.stringify({ child: 'tx', kind: 'sql', durationMs: 5, rowCount: 1, resumed: false })]);
    await w.query('commit');
    w.release();
    expect(await runner.run('tx')(c, signal)).toMatchObject({ child: 'tx', rowCount: 1, resumed: true });
    expect(await calls(c.loadId)).toBe(1);
    expect(await readMemo(split.db.state, c, 'child:tx')).toMatchObject({ rowCount: 1 });
    expect(await intents(split.db, c.runId)).toBe(0);
  });

  it('a child that commits itself records its memo in the state database after the work', async () => {
    const c = ctx();
    expect(await runner.run('committing')(c, signal)).toMatchObject({ resumed: false });
    expect(await runner.run('committing')(c, signal)).toMatchObject({ resumed: true });
    expect(await calls(c.loadId)).toBe(1);
    expect(await readMemo(split.db.state, c, 'child:committing')).toBeDefined();
    expect(await intents(split.db, c.runId)).toBe(0);
  });
});

describe('step memos with l2flow in the warehouse (one database)', () => {
  let db: TestDb;
  beforeAll(async () => { db = await createTestDb(); });
  afterAll(async () => { await db.drop(); });

  it('commits the work and the memo in one transaction and writes no intent rows', async () => {
    const one = { state: db.pool, dwh: db.pool };
    const ctx = key();
    await db.pool.query('create table if not exists intent_writes (n int)');
    // Any write to step_intent would be counted here.
    await db.pool.query(`create or replace function count_intent() returns trigger language plpgsql as $$
      begin insert into intent_writes values (1); return new; end $$;
      create trigger count_intent before insert on l2flow.step_intent for each row execute function count_intent()`);
    expect(await memoized(one, ctx, STEP, work(ctx))).toMatchObject({ resumed: false });
    expect(await memoized(one, ctx, STEP, work(ctx))).toMatchObject({ resumed: true });
    expect(await effects(one, ctx.runId)).toBe(1);
    expect((await db.pool.query('select count(*)::int as n from intent_writes')).rows[0].n).toBe(0);
  });
});
