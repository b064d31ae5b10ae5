import type pg from 'pg';
import { pino } from 'pino';
import { firstValueFrom, filter, timeout } from 'rxjs';
import { createActor, fromPromise, waitFor, type AnyActorLogic } from 'xstate';
import { describe, expect, it } from 'vitest';
import { activeSteps, workflowMachine, type WorkflowSnapshot } from '../../src/machines/workflow.js';
import { createRun, takeRun } from '../../src/runtime/run-store.js';
import { createSnapshotWriter } from '../../src/runtime/snapshot-writer.js';
import { useFixture, WF, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

// The snapshot writer's two promises: the stored run never goes back in time, whatever order the writes' round
// trips complete in; and a process that no longer owns a run stops executing it.

let fx: Fixture;
useFixture((f) => (fx = f));

const silent = pino({ level: 'silent' });

/** A promise with its resolve exposed. */
function gate() {
  let open!: () => void;
  const promise = new Promise<void>((r) => (open = r));
  return { promise, open };
}

/**
 * Snapshots of one real run of the machine, in transition order, each with its persisted form: every step succeeds
 * at once up to wait_for_success_end, which never ends. (Stand-in actors only produce the snapshots; what is under
 * test is the writer and PostgreSQL.)
 */
async function snapshotsOfARun(runId: string, logicalDate: string, businessDate: string) {
  const never = fromPromise(() => new Promise<never>(() => undefined));
  const ok = (out: unknown = {}) => fromPromise(async () => out);
  const actors: Record<string, AnyActorLogic> = {
    waitForL2FullLoad: ok(),
    getLoadId: ok({ loadId: 4242 }),
    workflowRegistration: ok(),
    waitForSuccessEnd: never,
  };
  const actor = createActor(workflowMachine.provide({ actors: actors as never }), {
    input: {
      runId, workflowId: WF, logicalDate, businessDate, attempt: 1,
      sensorTimeoutMs: { wait_for_l2_full_load: 60_000, wait_for_success_end: 60_000 },
    },
  });
  const seen: Array<{ snap: WorkflowSnapshot; persisted: unknown; step: string }> = [];
  actor.subscribe((snap) => seen.push({ snap, persisted: actor.getPersistedSnapshot(), step: activeSteps(snap.value).join(',') }));
  actor.start();
  await waitFor(actor, (s) => activeSteps(s.value).includes('wait_for_success_end'));
  actor.stop();
  // One snapshot per step entered, in order.
  const byStep = new Map(seen.map((s) => [s.step, s]));
  return ['wait_for_l2_full_load', 'get_load_id', 'workflow_registration', 'wait_for_success_end'].map((step) => byStep.get(step)!);
}

describe('the snapshot writer', () => {
  it('newest wins: a write whose round trip completes after later ones never leaves the run behind', async () => {
    const D = '2025-02-01';
    const { run } = await createRun(fx.db.pool, { workflowId: WF, logicalDate: D, businessDate: '2025-01-31', triggeredBy: 'manual' });
    const owner = 'writer-test:1:aaaaaa';
    expect(await takeRun(fx.db.pool, run.run_id, owner)).not.toBeNull();
    // Every write that reaches the row, in the order the server applied them.
    await fx.db.pool.query(`
      create table public.run_writes (seq bigserial, current_step text);
      create function public.record_run_write() returns trigger language plpgsql as $$
      begin insert into public.run_writes (current_step) values (new.current_step); return null; end $$;
      create trigger record_run_write after update on l2flow.run for each row
        when (new.run_id = '${run.run_id}') execute function public.record_run_write();`);

    const snaps = await snapshotsOfARun(run.run_id, D, '2025-01-31');
    const order = snaps.map((s) => s.step);
    // The first write's statement is held back on its way to the server (a slow connection, a busy pool), so
    // later writes could overtake it; every other statement goes through at once.
    const held = gate();
    let queries = 0;
    let passing = 0;
    let firstSent!: () => void;
    const firstInFlight = new Promise<void>((r) => (firstSent = r));
    const slow = {
      async query(text: string, values?: unknown[]) {
        if (++queries === 1) {
          firstSent();
          await held.promise;
          return fx.db.pool.query(text, values);
        }
        passing++;
        try {
          return await fx.db.pool.query(text, values);
        } finally {
          passing--;
        }
      },
    } as unknown as pg.Pool;
    let notOwner = 0;
    const writer = createSnapshotWriter({ pool: slow, runId: run.run_id, owner, log: silent, onCancelled: () => undefined, onNotOwner: () => notOwner++ });

    const [first, ...later] = snaps;
    void writer.write(first!.snap, first!.persisted);
    await firstInFlight;
    for (const s of later) void writer.write(s.snap, s.persisted);
    // Any later write that was sent instead of queued has landed before the first is let through.
    await new Promise((r) => setImmediate(r));
    await until('the writes that overtook the first to land', async () => passing === 0);
    held.open();
    await writer.flushed();

    const stored = (await fx.db.pool.query(`select current_step, snapshot, owner from l2flow.run where run_id = $1`, [run.run_id])).rows[0];
    expect(stored.current_step).toBe('wait_for_success_end');
    expect(stored.snapshot).toEqual(JSON.parse(JSON.stringify(snaps.at(-1)!.persisted)));
    const applied = (await fx.db.pool.query<{ current_step: string }>(`select current_step from public.run_writes order by seq`)).rows.map((r) => order.indexOf(r.current_step));
    // Some writes may be skipped (a queued snapshot is replaced by a newer one); none may go back in time.
    expect(applied.length).toBeGreaterThanOrEqual(2);
    expect(applied).toEqual([...applied].sort((a, b) => a - b));
    expect(new Set(applied).size).toBe(applied.length);
    expect(notOwner).toBe(0);
    await fx.db.pool.query(`drop trigger record_run_write on l2flow.run`);
  });

  it('a write refused because another process owns the run leaves the row as the other left it and says so', async () => {
    const D = '2025-02-02';
    const { run } = await createRun(fx.db.pool, { workflowId: WF, logicalDate: D, businessDate: '2025-02-01', triggeredBy: 'manual' });
    await takeRun(fx.db.pool, run.run_id, 'other-process:2:bbbbbb');
    const before = (await fx.db.pool.query(`select current_step, snapshot_version, snapshot, owner from l2flow.run where run_id = $1`, [run.run_id])).rows[0];
    const snaps = await snapshotsOfARun(run.run_id, D, '2025-02-01');
    let notOwner = 0;
    const writer = createSnapshotWriter({ pool: fx.db.pool, runId: run.run_id, owner: 'this-process:1:aaaaaa', log: silent, onCancelled: () => undefined, onNotOwner: () => notOwner++ });
    await writer.write(snaps.at(-1)!.snap, snaps.at(-1)!.persisted);
    expect(notOwner).toBe(1);
    expect((await fx.db.pool.query(`select current_step, snapshot_version, snapshot, owner from l2flow.run where run_id = $1`, [run.run_id])).rows[0]).toEqual(before);
  });
});

describe('ownership at run level', () => {
  it('a runtime whose run was taken over stops executing it: released at its next transition, no further step', async () => {
    const D = '2025-02-03';
    await fx.db.pool.query(`create table public.child_calls (child text, logical_date date, load_id bigint)`);
    const app = await fx.startApp(D, {
      // No claim round in the test's reach: once released, the run is not claimed back by this process.
      app: { claimIntervalMs: 60_000 },
      file: {
        children: {
          wf_data_preparation_for_reports: { kind: 'sql', statement: "insert into public.child_calls values ('reports', $1, $2)" },
          l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: "insert into public.child_calls values ('segmentation', $1, $2)" },
        },
      },
    });
    await fx.trigger(D);
    const id = `manual__${D}`;
    await until('the run to wait for its flag, executed here', async () =>
      app.supervisor.activeRunIds().includes(id) && (await fx.run(D))?.current_step === 'wait_for_l2_full_load');

    // What another process's take-over leaves in the row: its name as owner.
    const other = 'other-host:4242:cccccc';
    await fx.db.pool.query(`update l2flow.run set owner = $2 where run_id = $1`, [id, other]);
    const before = (await fx.db.pool.query(`select status, current_step, snapshot_version from l2flow.run where run_id = $1`, [id])).rows[0];
    const released = firstValueFrom(app.supervisor.events$.pipe(filter((e) => e.runId === id && e.type === 'released'), timeout(10_000)));
    // The flag moves the run on: its next snapshot write is refused, and the process must let the run go.
    await fx.insertFlag('2025-02-02');
    await released;
    expect(app.supervisor.activeRunIds()).toEqual([]);

    // Had it kept executing, the rest of the run (children, SAP, end) takes well under this.
    await new Promise((r) => setTimeout(r, 2_000));
    expect((await fx.db.pool.query(`select * from public.child_calls`)).rows).toEqual([]);
    expect(fx.sapRequests(D)).toEqual([]);
    expect((await fx.db.pool.query(`select count(*)::int as n from md.session_log where message like 'successful%'`)).rows[0].n).toBe(0);
    const after = (await fx.db.pool.query(`select status, current_step, snapshot_version, owner from l2flow.run where run_id = $1`, [id])).rows[0];
    expect(after).toEqual({ ...before, owner: other });
  });
});
