import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import pino from 'pino';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { createChildRunner, type ChildConfig, type ChildRunner } from '../../src/services/children/index.js';
import { createDedicatedConnections, type DedicatedConnections } from '../../src/services/db/index.js';
import type { StepContext } from '../../src/services/types.js';

const signal = new AbortController().signal;
const logger = pino({ level: 'silent' });
let seq = 0;
const ctx = (loadId: number | null = 42): StepContext => ({
  runId: `run-${++seq}`, workflowId: 'WF', logicalDate: '2024-03-02', businessDate: '2024-03-01', attempt: 1, loadId,
});

const children: Record<string, ChildConfig> = {
  insert_both: { kind: 'sql', statement: 'insert into t (ld, lid) values ($1, $2)', transactional: true },
  load_id_only: { kind: 'sql', statement: 'insert into t (lid) values ($2)', transactional: true },
  plain: { kind: 'sql', statement: 'select 1', transactional: true },
  insert_slowly: { kind: 'sql', statement: 'insert into t (ld, lid) select $1, $2 from pg_sleep(0.3)', transactional: true },
  call_proc: { kind: 'sql', statement: 'CALL p($1::date, $2::bigint)', transactional: true },
  call_committing: { kind: 'sql', statement: 'call p_commit($1)', transactional: false },
  broken: { kind: 'sql', statement: 'select 1 / 0', transactional: true },
  slow: { kind: 'sql', statement: 'select pg_sleep(30)', timeoutMs: 300, transactional: true },
  slow_no_timeout: { kind: 'sql', statement: 'select pg_sleep(31)', transactional: true },
  kill_idle: { kind: 'builtin', name: 'sys_kill_all_session_pg', idleSeconds: 0 },
  kill_very_idle: { kind: 'builtin', name: 'sys_kill_all_session_pg', idleSeconds: 3600 },
};

describe('child workflows', () => {
  let db: TestDb;
  let runner: ChildRunner;
  let connections: DedicatedConnections;
  beforeAll(async () => {
    db = await createTestDb();
    connections = createDedicatedConnections({ connectionString: db.uri, max: 4, applicationName: 'l2flow-child' });
    runner = createChildRunner({ pool: db.pool, dwh: db.pool, connections, children, logger });
    await db.pool.query(`create table t (ld date, lid bigint);
      create procedure p(d date, l bigint) language plpgsql as $$ begin insert into t values (d, l); end $$;
      create procedure p_commit(d date) language plpgsql as $$ begin insert into t (ld) values (d); commit; end $$;`);
  });
  afterAll(async () => { await connections.end(); await db.drop(); });

  const rowsOfT = async () => (await db.pool.query('select ld::text, lid::int from t order by ld, lid')).rows;
  const running = async (text: string) =>
    (await db.pool.query("select count(*)::int as n from pg_stat_activity where query = $1 and state = 'active' and pid <> pg_backend_pid()", [text])).rows[0].n;

  it('binds the logical date and load id, passing only the parameters a statement uses', async () => {
    expect(await runner.run('insert_both')(ctx(7), signal)).toMatchObject({ child: 'insert_both', kind: 'sql', rowCount: 1, resumed: false });
    await runner.run('load_id_only')(ctx(8), signal);
    expect(await runner.run('plain')(ctx(), signal)).toMatchObject({ rowCount: 1 });
    expect(await rowsOfT()).toEqual([{ ld: '2024-03-02', lid: 7 }, { ld: null, lid: 8 }]);
    await db.pool.query('truncate t');
  });

  it('calls procedures, inside a transaction or (when they commit themselves) outside one', async () => {
    await runner.run('call_proc')(ctx(9), signal);
    await runner.run('call_committing')(ctx(), signal);
    expect(await rowsOfT()).toEqual([{ ld: '2024-03-02', lid: 9 }, { ld: '2024-03-02', lid: null }]);
    await db.pool.query('truncate t');
  });

  it('runs a completed child only once per run attempt', async () => {
    const c = ctx(5);
    await runner.run('insert_both')(c, signal);
    expect(await runner.run('insert_both')(c, signal)).toMatchObject({ rowCount: 1, resumed: true });
    expect(await rowsOfT()).toEqual([{ ld: '2024-03-02', lid: 5 }]);
    await runner.run('insert_both')({ ...c, attempt: 2 }, signal);
    expect(await rowsOfT()).toHaveLength(2);
    await db.pool.query('truncate t');
  });

  it('reports an SQL error with the child name, SQLSTATE and server message', async () => {
    await expect(runner.run('broken')(ctx(), signal)).rejects.toMatchObject({
      code: 'CHILD_FAILED',
      message: expect.stringMatching(/broken.*22012.*division by zero/),
      details: { sqlstate: '22012' },
    });
  });

  it('cancels the query on the server when it times out', async () => {
    const started = Date.now();
    await expect(runner.run('slow')(ctx(), signal)).rejects.toMatchObject({
      code: 'CHILD_TIMEOUT', message: expect.stringContaining('cancelled on the server after 0.3s'),
    });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(await running('select pg_sleep(30)')).toBe(0);
  });

  it('cancels the query on the server when the step is aborted', async () => {
    const ac = new AbortController();
    const pending = runner.run('slow_no_timeout')(ctx(), ac.signal);
    await until(async () => (await running('select pg_sleep(31)')) === 1);
    ac.abort();
    await expect(pending).rejects.toMatchObject({ code: 'ABORTED' });
    expect(await running('select pg_sleep(31)')).toBe(0);
    expect(await db.pool.query('select count(*)::int as n from l2flow.step_memo where step = $1', ['child:slow_no_timeout']))
      .toMatchObject({ rows: [{ n: 0 }] });
  });

  it('names the config key to add for an unknown child', async () => {
    await expect(runner.run('nope')(ctx(), signal)).rejects.toMatchObject({
      code: 'CHILD_NOT_CONFIGURED', message: expect.stringContaining('children.nope'),
    });
  });

  it('sys_kill_all_session_pg terminates idle ordinary sessions only', async () => {
    const role = `l2flow_test_victim_${randomBytes(4).toString('hex')}`;
    await db.pool.query(`create role ${role} login`);
    const as = (user: string | undefined, application_name: string) => {
      const url = new URL(db.uri);
      if (user) url.username = user;
      const c = new pg.Client({ connectionString: url.toString(), application_name });
      c.on('error', () => undefined); // the victim's connection is expected to die
      return c;
    };
    const victim = as(role, 'victim');
    const ownApp = as(role, 'l2flow-x');
    const superuser = as(undefined, 'su-idle');
    try {
      for (const c of [victim, ownApp, superuser]) await c.connect();
      const pid = async (c: pg.Client) => (await c.query('select pg_backend_pid() as pid')).rows[0].pid as number;
      const [victimPid, ownPid, suPid] = [await pid(victim), await pid(ownApp), await pid(superuser)];
      await new Promise((r) => setTimeout(r, 50));

      expect(await runner.run('kill_very_idle')(ctx(), signal)).toMatchObject({ kind: 'builtin', terminated: 0 });
      const c = ctx();
      expect(await runner.run('kill_idle')(c, signal)).toMatchObject({ terminated: 1, resumed: false });
      const alive = async (p: number) =>
        (await db.pool.query('select count(*)::int as n from pg_stat_activity where pid = $1', [p])).rows[0].n === 1;
      await until(async () => !(await alive(victimPid)));
      expect(await alive(ownPid)).toBe(true);
      expect(await alive(suPid)).toBe(true);
      expect(await runner.run('kill_idle')(c, signal)).toMatchObject({ terminated: 1, resumed: true });
    } finally {
      await Promise.all([victim, ownApp, superuser].map((cl) => cl.end().catch(() => undefined)));
      await db.pool.query(`drop role if exists ${role}`);
    }
  });
  /**
   * The statements `fn` sends, each with the client it went on (pg's client query, wrapped for the call) and how many
   * statements sent before it on that client were still unanswered when it was sent (pipelined: more than 0).
   */
  async function statementsOf<T>(fn: () => Promise<T>): Promise<{ result: T; sent: { text: string; client: unknown; inFlight: number }[] }> {
    const original = pg.Client.prototype.query;
    const unanswered = new Map<unknown, number>();
    const sent: { text: string; client: unknown; inFlight: number }[] = [];
    const spy = vi.spyOn(pg.Client.prototype, 'query').mockImplementation(function (this: pg.Client, ...args: unknown[]) {
      const q = args[0];
      sent.push({ text: (typeof q === 'string' ? q : (q as { text: string }).text).replace(/\s+/g, ' ').trim(), client: this, inFlight: unanswered.get(this) ?? 0 });
      const r = (original as (...a: unknown[]) => unknown).apply(this, args);
      if (r instanceof Promise) {
        unanswered.set(this, (unanswered.get(this) ?? 0) + 1);
        const answered = () => void unanswered.set(this, unanswered.get(this)! - 1);
        r.then(answered, answered);
      }
      return r as never;
    });
    try {
      return { result: await fn(), sent };
    } finally {
      spy.mockRestore();
    }
  }

  it('a child connection asks for its backend pid once, however many children it runs', async () => {
    const { sent } = await statementsOf(async () => {
      for (let i = 0; i < 4; i++) await runner.run('plain')(ctx(), signal);
      await runner.run('kill_very_idle')(ctx(), signal);
    });
    const setups = sent.filter((s) => s.text.includes('pg_backend_pid()') && s.text.includes('client_connection_check_interval'));
    const childClients = new Set(sent.filter((s) => s.text === 'select 1').map((s) => s.client));
    // Five children ran one after another; each connection among them was set up at most once (none if set up earlier).
    expect(new Set(setups.map((s) => s.client)).size).toBe(setups.length);
    expect(setups.length).toBeLessThanOrEqual(childClients.size);
    expect(childClients.size).toBeLessThan(4);
  });

  it('a transactional child is two round trips: begin with its guard and the statement sent together, then the memo with commit', async () => {
    const c = ctx(11);
    const fresh = await statementsOf(() => runner.run('insert_both')(c, signal));
    expect(fresh.result).toMatchObject({ rowCount: 1, resumed: false });
    expect(fresh.sent.filter((s) => !s.text.includes('client_connection_check_interval')).map((s) => [s.text.slice(0, 30), s.inFlight])).toEqual([
      ['begin; select l2flow.assert_un', 0], ['insert into t (ld, lid) values', 1], ['insert into l2flow.step_memo (', 0],
    ]);
    // Recorded: the guard aborts the transaction, the statement sent behind it is refused, the memo is the result.
    const again = await statementsOf(() => runner.run('insert_both')(c, signal));
    expect(again.result).toMatchObject({ rowCount: 1, resumed: true });
    expect(again.sent.map((s) => s.text.slice(0, 30))).toEqual(['begin; select l2flow.assert_un', 'insert into t (ld, lid) values', 'rollback', 'select output from l2flow.step']);
    expect(await rowsOfT()).toEqual([{ ld: '2024-03-02', lid: 11 }]);
    await db.pool.query('truncate t');
  });

  it('a recorded transactional child never executes its statement (not even rolled back: a sequence would show it)', async () => {
    await db.pool.query('create sequence if not exists child_seq');
    const seqRunner = createChildRunner({ pool: db.pool, dwh: db.pool, connections, logger,
      children: { take_number: { kind: 'sql', statement: "select nextval('child_seq')", transactional: true } } });
    const c = ctx();
    expect(await seqRunner.run('take_number')(c, signal)).toMatchObject({ rowCount: 1, resumed: false });
    expect(await seqRunner.run('take_number')(c, signal)).toMatchObject({ rowCount: 1, resumed: true });
    expect(await seqRunner.run('take_number')(c, signal)).toMatchObject({ resumed: true });
    // nextval is never rolled back: had the statement run behind the guard, the sequence would have moved on.
    expect((await db.pool.query<{ last_value: string }>('select last_value from child_seq')).rows[0]!.last_value).toBe('1');
  });

  it('the session killer is one statement (memo look, terminations, memo): recorded, it terminates nothing and writes nothing', async () => {
    const role = `l2flow_test_victim_${randomBytes(4).toString('hex')}`;
    await db.pool.query(`create role ${role} login`);
    const url = new URL(db.uri);
    url.username = role;
    const victim = new pg.Client({ connectionString: url.toString(), application_name: 'victim' });
    victim.on('error', () => undefined);
    try {
      const c = ctx();
      const fresh = await statementsOf(() => runner.run('kill_idle')(c, signal));
      expect(fresh.result).toMatchObject({ resumed: false });
      expect(fresh.sent.filter((s) => !s.text.includes('client_connection_check_interval')).map((s) => s.text.slice(0, 30)))
        .toEqual(['with recorded as materialized ']);
      expect((await db.pool.query('select output from l2flow.step_memo where run_id = $1', [c.runId])).rows.map((r) => r.output))
        .toEqual([{ ...fresh.result, resumed: false }]);
      // An idle session appears after the child was recorded: invoking it again must not terminate it.
      await victim.connect();
      const victimPid = (await victim.query('select pg_backend_pid() as pid')).rows[0].pid as number;
      await new Promise((r) => setTimeout(r, 50));
      const again = await statementsOf(() => runner.run('kill_idle')(c, signal));
      expect(again.result).toEqual({ ...fresh.result, resumed: true });
      expect(again.sent.map((s) => s.text.slice(0, 30))).toEqual(['with recorded as materialized ']);
      expect((await db.pool.query('select count(*)::int as n from pg_stat_activity where pid = $1', [victimPid])).rows[0].n).toBe(1);
    } finally {
      await victim.end().catch(() => undefined);
      await db.pool.query(`drop role if exists ${role}`);
    }
  });

  it('quotes the run id in the memo statements: quotes and backslashes are data, not SQL', async () => {
    const c = { ...ctx(12), runId: String.raw`run-'); drop table t; --\\'` };
    expect(await runner.run('insert_both')(c, signal)).toMatchObject({ resumed: false });
    expect(await runner.run('insert_both')(c, signal)).toMatchObject({ resumed: true });
    expect((await db.pool.query('select run_id from l2flow.step_memo where run_id = $1', [c.runId])).rows).toHaveLength(1);
    expect(await rowsOfT()).toEqual([{ ld: '2024-03-02', lid: 12 }]);
    await db.pool.query('truncate t');
  });

  it('the same transactional child invoked twice at once commits its effect once; the other returns the recorded result', async () => {
    const c = ctx(13);
    // Both look for the memo before either commits (the statement sleeps): the second's memo insert meets the first's.
    const both = await Promise.all([runner.run('insert_slowly')(c, signal), runner.run('insert_slowly')(c, signal)]);
    expect(both.map((r) => r.resumed).sort()).toEqual([false, true]);
    expect(await rowsOfT()).toEqual([{ ld: '2024-03-02', lid: 13 }]);
    await db.pool.query('truncate t');
  });
});

async function until(cond: () => Promise<boolean>, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}
