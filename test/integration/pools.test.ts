import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import pg from 'pg';
import pino from 'pino';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { createPools, type Pools } from '../../src/services/db/index.js';

const never = new AbortController().signal;
const logger = pino({ level: 'silent' });
const config = { dwh_l2: { slots: 1 }, wide: { slots: 2 } };

/** A promise with its resolve exposed: lets a test decide when a holder finishes. */
function gate<T = void>() {
  let open!: (v: T) => void;
  const promise = new Promise<T>((r) => { open = r; });
  return { promise, open };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('cross-process pool slots', () => {
  let db: TestDb;
  // Two pg pools and two pool services stand for two l2flow processes.
  let pgA: pg.Pool;
  let pgB: pg.Pool;
  let a: Pools;
  let b: Pools;
  beforeAll(async () => {
    db = await createTestDb({ migrate: false });
    pgA = new pg.Pool({ connectionString: db.uri, application_name: 'l2flow-proc-a', max: 3 });
    pgB = new pg.Pool({ connectionString: db.uri, application_name: 'l2flow-proc-b', max: 3 });
    for (const p of [pgA, pgB]) p.on('error', () => undefined);
    a = createPools({ pool: pgA, pools: config, logger, pollMs: 30 });
    b = createPools({ pool: pgB, pools: config, logger, pollMs: 30 });
  });
  afterAll(async () => {
    await a.close();
    await b.close();
    await pgA.end();
    await pgB.end();
    await db.drop();
  });

  const advisoryLocks = async () =>
    (await db.pool.query(`select pid from pg_locks where locktype = 'advisory' and granted
       and database = (select oid from pg_database where datname = current_database())`)).rows.map((r) => r.pid as number);
  const noClientCheckedOut = (p: pg.Pool) => p.idleCount === p.totalCount;

  it('with one slot, the second process waits until the first finishes', async () => {
    const events: string[] = [];
    const holdA = gate();
    const first = a.withSlot('dwh_l2', never, async () => { events.push('a start'); await holdA.promise; events.push('a end'); return 'a'; });
    await until(async () => events.includes('a start'));
    const logs: { msg: string }[] = [];
    const watched = createPools({ pool: pgB, pools: config, pollMs: 30, logger: pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l)) }) });
    const second = watched.withSlot('dwh_l2', never, async () => { events.push('b start'); return 'b'; });
    await sleep(150);
    expect(events).toEqual(['a start']);
    expect(logs.filter((l) => l.msg.startsWith('waiting for a slot of pool dwh_l2'))).toHaveLength(1);
    holdA.open();
    expect(await Promise.all([first, second])).toEqual(['a', 'b']);
    expect(events).toEqual(['a start', 'a end', 'b start']);
    expect(await advisoryLocks()).toEqual([]);
  });

  it('with two slots, both processes run at once', async () => {
    let inside = 0;
    const both = gate();
    const body = async () => {
      if (++inside === 2) both.open();
      await Promise.race([both.promise, sleep(2_000).then(() => { throw new Error('the other holder never started'); })]);
    };
    await Promise.all([a.withSlot('wide', never, body), b.withSlot('wide', never, body)]);
    expect(await advisoryLocks()).toEqual([]);
  });

  it('frees the slot when the holder\'s backend is terminated', async () => {
    const holdA = gate();
    let aStarted = false;
    const first = a.withSlot('dwh_l2', never, async () => { aStarted = true; await holdA.promise; return 'a done'; });
    await until(async () => aStarted);
    const [holderPid] = await advisoryLocks();
    const bRan = gate();
    const second = b.withSlot('dwh_l2', never, async () => { bRan.open(); return 'b'; });
    await sleep(100);
    await db.pool.query('select pg_terminate_backend($1)', [holderPid]);
    await bRan.promise;
    expect(await second).toBe('b');
    holdA.open();
    expect(await first).toBe('a done');
    expect(noClientCheckedOut(pgA) && noClientCheckedOut(pgB)).toBe(true);
    expect(await advisoryLocks()).toEqual([]);
  });

  it('stops waiting with ABORTED when aborted, leaking neither lock nor client', async () => {
    const holdA = gate();
    let aStarted = false;
    const first = a.withSlot('dwh_l2', never, async () => { aStarted = true; await holdA.promise; });
    await until(async () => aStarted);
    const ac = new AbortController();
    let bRan = false;
    const second = b.withSlot('dwh_l2', ac.signal, async () => { bRan = true; }, { runId: 'r1', step: 'run_wf_data_preparation_for_reports' });
    await sleep(100);
    ac.abort();
    await expect(second).rejects.toMatchObject({ code: 'ABORTED', message: expect.stringContaining('dwh_l2') });
    expect(bRan).toBe(false);
    expect(noClientCheckedOut(pgB)).toBe(true);
    expect(await advisoryLocks()).toHaveLength(1);
    holdA.open();
    await first;
    expect(await advisoryLocks()).toEqual([]);
  });

  it('names the config key for an unknown pool', async () => {
    await expect(a.withSlot('nope', never, async () => 1)).rejects.toThrow(/pools\.nope/);
    expect(() => createPools({ pool: pgA, pools: { bad: { slots: 0 } }, logger })).toThrow(/pools\.bad\.slots/);
  });
});

async function until(cond: () => Promise<boolean>, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}
