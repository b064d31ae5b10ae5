import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { createRunLocks } from '../../src/runtime/run-locks.js';
import { createRun, listSteps, saveProgress, takeRun, type RunProgress } from '../../src/runtime/run-store.js';
import type { StepRecord, WorkflowSnapshot } from '../../src/machines/workflow.js';
import { createSnapshotWriter } from '../../src/runtime/snapshot-writer.js';
import { pino } from 'pino';

// The fewer-round-trips paths of a run: the claim's lock + slot in one statement, and snapshot writes that send only
// the step rows that changed. Both must keep what the slower paths guaranteed.

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';

describe('claiming a run: its lock and a max_active_runs slot in one statement', () => {
  let db: TestDb;
  let other: TestDb;
  beforeAll(async () => {
    db = await createTestDb({ migrate: false });
    other = await createTestDb({ migrate: false });
  });
  afterAll(async () => {
    await db?.drop();
    await other?.drop();
  });

  /** Advisory locks held in `d`'s database, as (classid, objid) pairs. */
  const held = async (d: TestDb) =>
    (await d.pool.query<{ k: string }>(`select classid::int || ':' || objid::int as k from pg_locks where locktype = 'advisory' and granted
       and database = (select oid from pg_database where datname = current_database()) order by 1`)).rows.map((r) => r.k);

  it('takes the run and a slot; with every slot held it gives the run back, and another process cannot take a held run', async () => {
    const a = createRunLocks({ connectionString: db.uri, maxActiveRuns: 1, workflowId: WF });
    const b = createRunLocks({ connectionString: db.uri, maxActiveRuns: 1, workflowId: WF });
    try {
      expect(await a.tryLockRunWithSlot('run-1')).toEqual({ locked: true, slot: 0 });
      expect(await held(db)).toHaveLength(2); // the run's lock and slot 0
      // B: run-1 is A's; run-2 is free but the one slot is taken, so B must not keep run-2's lock.
      expect(await b.tryLockRunWithSlot('run-1')).toEqual({ locked: false, slot: null });
      expect(await b.tryLockRunWithSlot('run-2')).toEqual({ locked: true, slot: null });
      expect(await held(db)).toHaveLength(2);
      // A finishes run-1 (lock and slot released together): B gets run-2 with the freed slot.
      await a.unlock('run-1', 0);
      expect(await held(db)).toEqual([]);
      expect(await b.tryLockRunWithSlot('run-2')).toEqual({ locked: true, slot: 0 });
    } finally {
      await a.end();
      await b.end();
    }
  });

  it('claims sent at once on one lock session take distinct slots (its own are never granted twice), the extra one none', async () => {
    const a = createRunLocks({ connectionString: db.uri, maxActiveRuns: 3, workflowId: WF });
    try {
      // All four statements are queued before the first answered: each must skip the slots taken before it.
      const got = await Promise.all(['r1', 'r2', 'r3', 'r4'].map((r) => a.tryLockRunWithSlot(r)));
      expect(got).toEqual([{ locked: true, slot: 0 }, { locked: true, slot: 1 }, { locked: true, slot: 2 }, { locked: true, slot: null }]);
      expect(await held(db)).toHaveLength(6); // three runs, three slots; r4's lock was given back
      expect(await a.trySlot()).toBeNull();
      await a.unlock('r2', 1);
      expect(await Promise.all([a.tryLockRunWithSlot('r4'), a.trySlot()])).toEqual([{ locked: true, slot: 1 }, null]);
    } finally {
      await a.end();
    }
  });

  it('slots held by a runtime of another database on the same server do not count', async () => {
    const elsewhere = createRunLocks({ connectionString: other.uri, maxActiveRuns: 1, workflowId: WF });
    const here = createRunLocks({ connectionString: db.uri, maxActiveRuns: 1, workflowId: WF });
    try {
      expect(await elsewhere.tryLockRunWithSlot('run-x')).toEqual({ locked: true, slot: 0 });
      expect(await here.tryLockRunWithSlot('run-y')).toEqual({ locked: true, slot: 0 });
      expect(await here.trySlot()).toBeNull(); // this database's only slot is now taken, by `here` itself
    } finally {
      await elsewhere.end();
      await here.end();
    }
  });
});

describe('snapshot writes send only the step rows that changed', () => {
  let db: TestDb;
  beforeAll(async () => {
    db = await createTestDb();
  });
  afterAll(async () => {
    await db?.drop();
  });

  const rec = (startedAt: number, status: StepRecord['status'], endedAt?: number): StepRecord =>
    ({ status, startedAt, try: 1, ...(endedAt ? { endedAt } : {}) }) as StepRecord;
  const progress = (steps: RunProgress['steps'], status: RunProgress['status'] = 'running'): RunProgress => ({
    status, currentStep: null, loadId: null, error: null, snapshot: { steps }, attempt: 1, steps, tries: [],
  });
  /** Each step row's xmin: unchanged when the row was not written again. */
  const versions = async (runId: string) =>
    Object.fromEntries((await db.pool.query<{ step: string; x: string }>(`select step, xmin::text as x from l2flow.step where run_id = $1`, [runId])).rows.map((r) => [r.step, r.x]));

  it('a transition rewrites the rows it touched, the others keep their version, and the history is complete', async () => {
    const { run } = await createRun(db.pool, { workflowId: WF, logicalDate: '2030-01-02', businessDate: '2030-01-01', triggeredBy: 'manual' });
    await takeRun(db.pool, run.run_id, 'me');
    const written = new Map<string, string>();
    const t = Date.UTC(2030, 0, 2);
    const s1 = { wait_for_l2_full_load: rec(t, 'success', t + 5), get_load_id: rec(t + 5, 'running') };
    expect(await saveProgress(db.pool, run.run_id, 'me', progress(s1), written)).toBe(true);
    const v1 = await versions(run.run_id);
    const s2 = { ...s1, get_load_id: rec(t + 5, 'success', t + 9), workflow_registration: rec(t + 9, 'running') };
    expect(await saveProgress(db.pool, run.run_id, 'me', progress(s2), written)).toBe(true);
    const v2 = await versions(run.run_id);
    expect(v2.wait_for_l2_full_load).toBe(v1.wait_for_l2_full_load); // not written again
    expect(v2.get_load_id).not.toBe(v1.get_load_id);
    const rows = await listSteps(db.pool, run.run_id);
    expect(rows.map((r) => [r.step, r.status])).toEqual([
      ['wait_for_l2_full_load', 'success'], ['get_load_id', 'success'], ['workflow_registration', 'running'],
    ]);
    // A write refused (the run is not ours) is not remembered: the next owner's first write sends every row.
    expect(await saveProgress(db.pool, run.run_id, 'someone-else', progress({ ...s2, workflow_registration: rec(t + 9, 'success', t + 12) }), written)).toBe(false);
    expect((await listSteps(db.pool, run.run_id)).at(-1)?.status).toBe('running');
    expect(await saveProgress(db.pool, run.run_id, 'me', progress({ ...s2, workflow_registration: rec(t + 9, 'success', t + 12) }), written)).toBe(true);
    expect((await listSteps(db.pool, run.run_id)).at(-1)?.status).toBe('success');
  });
});

describe('the snapshot writer: transitions of one tick cost one write, a running run writes at most every spacing', () => {
  let db: TestDb;
  beforeAll(async () => {
    db = await createTestDb();
  });
  afterAll(async () => {
    await db?.drop();
  });

  /** A run's snapshot at a step (or final), as the writer reads it. */
  const snap = (value: string, steps: Record<string, StepRecord>, final = false) =>
    ({ status: final ? 'done' : 'active', value, matches: (v: string) => v === value, context: { failure: null, loadId: 7, attempt: 1, steps, tries: [] } }) as unknown as WorkflowSnapshot;
  const stored = async (runId: string) =>
    (await db.pool.query<{ v: number; status: string; current_step: string; snapshot: { n: number } }>(
      'select snapshot_version::int as v, status, current_step, snapshot from l2flow.run where run_id = $1', [runId])).rows[0]!;
  const tick = () => new Promise<void>((r) => setImmediate(r));
  const t = Date.UTC(2030, 2, 2);
  const s1 = { wait_for_l2_full_load: { status: 'running', startedAt: t } } as Record<string, StepRecord>;
  const s2 = { ...s1, wait_for_l2_full_load: { status: 'success', startedAt: t, endedAt: t + 1 }, get_load_id: { status: 'running', startedAt: t + 1 } } as Record<string, StepRecord>;
  const s3 = { ...s2, get_load_id: { status: 'success', startedAt: t + 1, endedAt: t + 2 }, workflow_registration: { status: 'running', startedAt: t + 2 } } as Record<string, StepRecord>;
  const s4 = { ...s3, workflow_registration: { status: 'success', startedAt: t + 2, endedAt: t + 3 }, end: { status: 'running', startedAt: t + 3 } } as Record<string, StepRecord>;
  const s5 = { ...s4, end: { status: 'success', startedAt: t + 3, endedAt: t + 4 } } as Record<string, StepRecord>;
  async function takenRun(logicalDate: string, spacingMs: number) {
    const { run } = await createRun(db.pool, { workflowId: WF, logicalDate, businessDate: '2030-03-01', triggeredBy: 'manual' });
    await takeRun(db.pool, run.run_id, 'me');
    const lost: string[] = [];
    const w = createSnapshotWriter({
      pool: db.pool, runId: run.run_id, owner: 'me', log: pino({ level: 'silent' }), spacingMs,
      onCancelled: () => lost.push('cancelled'), onNotOwner: () => lost.push('not owner'),
    });
    return { runId: run.run_id, w, lost };
  }

  it('three transitions in one tick are one write of the newest; with no spacing, transitions of later ticks each write', async () => {
    const { runId, w, lost } = await takenRun('2030-03-02', 0);
    // The run's start, its sensor passing at once and the next step's start, all in one tick.
    void w.write(snap('wait_for_l2_full_load', s1), { n: 1 });
    void w.write(snap('get_load_id', s2), { n: 2 });
    void w.write(snap('workflow_registration', s3), { n: 3 });
    await w.flushed();
    expect(await stored(runId)).toEqual({ v: 1, status: 'running', current_step: 'workflow_registration', snapshot: { n: 3 } });
    expect((await listSteps(db.pool, runId)).map((r) => [r.step, r.status])).toEqual([
      ['wait_for_l2_full_load', 'success'], ['get_load_id', 'success'], ['workflow_registration', 'running'],
    ]);
    await w.write(snap('end', s4), { n: 4 });
    expect(await stored(runId)).toMatchObject({ v: 2, current_step: 'end', snapshot: { n: 4 } });
    await w.write(snap('success', s5, true), { n: 5 });
    expect(await stored(runId)).toMatchObject({ v: 3, status: 'success', current_step: 'success', snapshot: { n: 5 } });
    expect(lost).toEqual([]);
  });

  it('within the spacing (from the claim), transitions of separate ticks wait for one write of the newest; a final status is written at once', async () => {
    // A spacing far longer than the test: nothing here may wait for it.
    const { runId, w, lost } = await takenRun('2030-03-03', 60_000);
    const claimed = (await stored(runId)).v;
    // The claim wrote the row: the first snapshot is spaced from it like any other.
    void w.write(snap('wait_for_l2_full_load', s1), { n: 1 });
    await tick();
    void w.write(snap('get_load_id', s2), { n: 2 });
    await tick();
    void w.write(snap('workflow_registration', s3), { n: 3 });
    await tick();
    void w.write(snap('end', s4), { n: 4 });
    await tick();
    await new Promise((r) => setTimeout(r, 100)); // time for a write that should not happen to land
    expect((await stored(runId)).v).toBe(claimed); // held back
    // The run ends: its final status is not held back, and it supersedes the held-back progress (one write).
    await w.write(snap('success', s5, true), { n: 5 });
    expect(await stored(runId)).toMatchObject({ v: claimed + 1, status: 'success', current_step: 'success', snapshot: { n: 5 } });
    expect((await listSteps(db.pool, runId)).map((r) => [r.step, r.status])).toEqual([
      ['wait_for_l2_full_load', 'success'], ['get_load_id', 'success'], ['workflow_registration', 'success'], ['end', 'success'],
    ]);
    // Stopping the run here (flushed) writes a held-back snapshot at once too.
    const other = await takenRun('2030-03-04', 60_000);
    const before = (await stored(other.runId)).v;
    void other.w.write(snap('wait_for_l2_full_load', s1), { n: 1 });
    await tick();
    void other.w.write(snap('get_load_id', s2), { n: 2 });
    await other.w.flushed();
    expect(await stored(other.runId)).toMatchObject({ v: before + 1, current_step: 'get_load_id', snapshot: { n: 2 } });
    expect([...lost, ...other.lost]).toEqual([]);
  });
});
