import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import pino from 'pino';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { createPools, type Pools } from '../../src/services/db/index.js';
import { createRunLocks, type RunLocks } from '../../src/runtime/run-locks.js';

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
  // Two lock sessions and two pool services stand for two l2flow processes.
  let locksA: RunLocks;
  let locksB: RunLocks;
  let a: Pools;
  let b: Pools;
  beforeAll(async () => {
    db = await createTestDb({ migrate: false });
    locksA = createRunLocks({ connectionString: db.uri, maxActiveRuns: 1, workflowId: 'wf' });
    locksB = createRunLocks({ connectionString: db.uri, maxActiveRuns: 1, workflowId: 'wf' });
    a = createPools({ locks: locksA, pools: config, logger, pollMs: 30 });
    b = createPools({ locks: locksB, pools: config, logger, pollMs: 30 });
  });
  afterAll(async () => {
    await a.close();
    await b.close();
    await locksA.end();
    await locksB.end();
    await db.drop();
  });

  const advisoryLocks = async () =>
    (await db.pool.query(`select pid from pg_locks where locktype = 'advisory' and granted
       and database = (select oid from pg_database where datname = current_database())`)).rows.map((r) => r.pid as number);

  it('with one slot, the second process waits until the first finishes', async () => {
    const events: string[] = [];
    const holdA = gate();
    const first = a.withSlot('dwh_l2', never, async () => { events.push('a start'); await holdA.promise; events.push('a end'); return 'a'; });
    await until(async () => events.includes('a start'));
    const logs: { msg: string }[] = [];
    const watched = createPools({ locks: locksB, pools: config, pollMs: 30, logger: pino({ level: 'info' }, { write: (l: string) => logs.push(JSON.parse(l)) }) });
    const second = watched.withSlot('dwh_l2', never, async () => { events.push('b start'); return 'b'; });
    await sleep(150);
    expect(events).toEqual(['a start']);
    expect(logs.filter((l) => l.msg.startsWith('waiting for a slot of pool dwh_l2'))).toHaveLength(1);
    holdA.open();
    expect(await Promise.all([first, second])).toEqual(['a', 'b']);
    expect(events).toEqual(['a start', 'a end', 'b start']);
    // The slot is given back right after the step, without the step waiting for the unlock.
    await vi.waitFor(async () => expect(await advisoryLocks()).toEqual([]), { timeout: 5_000 });
  });

  it('with two slots, both processes run at once', async () => {
    let inside = 0;
    const both = gate();
    const body = async () => {
      if (++inside === 2) both.open();
      await Promise.race([both.promise, sleep(2_000).then(() => { throw new Error('the other holder never started'); })]);
    };
    await Promise.all([a.withSlot('wide', never, body), b.withSlot('wide', never, body)]);
    // The slot is given back right after the step, without the step waiting for the unlock.
    await vi.waitFor(async () => expect(await advisoryLocks()).toEqual([]), { timeout: 5_000 });
  });

  it('frees the slot when the holder\'s lock session dies and does not come back', async () => {
    // A process that died: its lock connection is gone and nothing takes its locks again.
    const dying = createRunLocks({ connectionString: db.uri, maxActiveRuns: 1, workflowId: 'wf', recoverWithinMs: 0 });
    const holder = createPools({ locks: dying, pools: config, logger, pollMs: 30 });
    const holdA = gate();
    let aStarted = false;
    const first = holder.withSlot('dwh_l2', never, async () => { aStarted = true; await holdA.promise; return 'a done'; });
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
    // The slot is given back right after the step, without the step waiting for the unlock.
    await vi.waitFor(async () => expect(await advisoryLocks()).toEqual([]), { timeout: 5_000 });
    await dying.end();
  });

  it('a holder whose lock connection breaks and comes back takes its slot again; the waiter keeps waiting', async () => {
    const holdA = gate();
    let aStarted = false;
    const relocked = new Promise((resolve) => locksA.relocked$.subscribe(resolve));
    const first = a.withSlot('dwh_l2', never, async () => { aStarted = true; await holdA.promise; return 'a done'; });
    await until(async () => aStarted);
    const [holderPid] = await advisoryLocks();
    let bRan = false;
    // A waiter that looks again only every 2 s: the holder's reconnection (milliseconds) cannot lose the race to it.
    const patient = createPools({ locks: locksB, pools: config, logger, pollMs: 2_000 });
    const second = patient.withSlot('dwh_l2', never, async () => { bRan = true; return 'b'; });
    await sleep(100);
    await db.pool.query('select pg_terminate_backend($1)', [holderPid]);
    expect(await relocked).toEqual({ runs: [], slots: [], leader: false, named: [] });
    await sleep(300);
    expect(bRan).toBe(false);
    holdA.open();
    expect(await first).toBe('a done');
    expect(await second).toBe('b');
    // The slot is given back right after the step, without the step waiting for the unlock.
    await vi.waitFor(async () => expect(await advisoryLocks()).toEqual([]), { timeout: 5_000 });
  });

  it('stops waiting with ABORTED when aborted, leaking no lock', async () => {
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
    expect(await advisoryLocks()).toHaveLength(1);
    holdA.open();
    await first;
    // The slot is given back right after the step, without the step waiting for the unlock.
    await vi.waitFor(async () => expect(await advisoryLocks()).toEqual([]), { timeout: 5_000 });
  });

  it('a slot freed in this process wakes its waiter at once, not at its next poll', async () => {
    const slow = createPools({ locks: locksA, pools: config, logger, pollMs: 60_000 });
    const holdA = gate();
    const events: string[] = [];
    const first = slow.withSlot('dwh_l2', never, async () => { events.push('first'); await holdA.promise; });
    await until(async () => events.includes('first'));
    const second = slow.withSlot('dwh_l2', never, async () => { events.push('second'); });
    await sleep(100);
    expect(events).toEqual(['first']);
    const freedAt = Date.now();
    holdA.open();
    await Promise.all([first, second]);
    expect(events).toEqual(['first', 'second']);
    // The poll would have fired after 60 s: anything well below it can only be the wake-up.
    expect(Date.now() - freedAt).toBeLessThan(30_000);
    await slow.close();
  });

  it('names the config key for an unknown pool', async () => {
    await expect(a.withSlot('nope', never, async () => 1)).rejects.toThrow(/pools\.nope/);
  });
});

async function until(cond: () => Promise<boolean>, timeoutMs = 3_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await sleep(10);
  }
}
