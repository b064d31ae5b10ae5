import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { STEP_IDS } from '../../src/machines/steps.js';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { runMain } from '../helpers/process.js';

// `l2flow status`: the grid (dates down, steps across), its JSON, and one run's timeline, read from real rows.

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';

describe('l2flow status grid and timeline', () => {
  let db: TestDb;
  const status = (...args: string[]) => runMain(['status', ...args], { L2FLOW_CONN_DWH: db.uri, L2FLOW_START_DATE: '2024-01-01' });

  /** A run with step rows `[step, status, seconds it took (null: still going), error code?]`, started in order. */
  async function seed(date: string, run: { status: string; current: string | null; loadId?: number; error?: string }, steps: Array<[string, string, number | null, string?]>) {
    const id = `backfill__${date}`;
    const error = run.error ? JSON.stringify({ code: run.error, message: `${run.current}: it broke` }) : null;
    await db.pool.query(
      `insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status, current_step, load_id, error, triggered_by, started_at, finished_at)
       values ($1, $2, $3, $3::date - 1, $4, $5, $6, $7, 'backfill', now() - interval '1 hour', case when $4 in ('success', 'failed') then now() end)`,
      [id, WF, date, run.status, run.current, run.loadId ?? null, error],
    );
    let at = 3600;
    for (const [step, st, took, code] of steps) {
      await db.pool.query(
        `insert into l2flow.step (run_id, step, attempt, status, started_at, finished_at, error)
         values ($1, $2, 1, $3, now() - make_interval(secs => $4), case when $5::int is null then null else now() - make_interval(secs => $4 - $5) end, $6)`,
        [id, step, st, at, took, code ? JSON.stringify({ code, message: `${step} broke` }) : null],
      );
      at -= took ?? 0;
    }
  }

  const ok = (n: number): Array<[string, string, number]> => STEP_IDS.slice(0, n).map((s) => [s, 'success', 2]);

  beforeAll(async () => {
    db = await createTestDb();
    await seed('2024-03-01', { status: 'success', current: 'success', loadId: 11 }, ok(9));
    await seed('2024-03-02', { status: 'failed', current: 'failed', loadId: 12, error: 'CHILD_FAILED' }, [
      ...ok(6),
      ['load_ds_client_segmentation', 'failed', 3, 'CHILD_FAILED'],
      ['email_on_failure', 'success', 1],
    ]);
    await seed('2024-03-03', { status: 'running', current: 'wait_for_success_end', loadId: 13 }, [...ok(3), ['wait_for_success_end', 'running', null]]);
    await seed('2024-03-04', { status: 'running', current: 'wait_for_l2_full_load' }, [['wait_for_l2_full_load', 'running', null]]);
  }, 120_000);
  afterAll(async () => {
    await db?.drop();
  });

  it('shows one symbol per step state, newest date first, with a legend naming every step', async () => {
    const r = await status();
    expect(r.code, r.err).toBe(0);
    const lines = r.out.split('\n');
    expect(lines[0]).toMatch(/^logical_date\s+status\s+load_id\s+1 {2}2 {2}3 .* 9 {2}10 {2}error$/);
    const row = (date: string) => {
      const line = lines.find((l) => l.startsWith(date))!;
      return line.split(/\s+/).slice(3, 13).join(' ');
    };
    expect(lines.slice(1, 5).map((l) => l.slice(0, 10))).toEqual(['2024-03-04', '2024-03-03', '2024-03-02', '2024-03-01']);
    expect(row('2024-03-01')).toBe('✓ ✓ ✓ ✓ ✓ ✓ ✓ ✓ ✓ ·');
    // Failed in segmentation: the steps after it never started, the failure mail step ran.
    expect(row('2024-03-02')).toBe('✓ ✓ ✓ ✓ ✓ ✓ ✗ · · ✓');
    expect(lines.find((l) => l.startsWith('2024-03-02'))).toMatch(/^2024-03-02\s+failed\s+12\s.*CHILD_FAILED: failed: it broke$/);
    expect(row('2024-03-03')).toBe('✓ ✓ ✓ … · · · · · ·');
    expect(row('2024-03-04')).toBe('… · · · · · · · · ·');
    for (const [i, id] of STEP_IDS.entries()) expect(r.out).toContain(`${i + 1} ${id}`);
    expect(r.out).toMatch(/symbols: ✓ success {2}✗ failed {2}▶ running {2}… waiting \(sensor\) {2}· not started {2}⊘ cancelled/);
  });

  it('--json gives the same data: each run with its steps by id and state', async () => {
    const r = await status('--json');
    expect(r.code).toBe(0);
    const runs = JSON.parse(r.out) as { logical_date: string; status: string; load_id: number | null; steps: Record<string, string> }[];
    expect(runs.map((x) => [x.logical_date, x.status, x.load_id])).toEqual([
      ['2024-03-04', 'running', null],
      ['2024-03-03', 'running', 13],
      ['2024-03-02', 'failed', 12],
      ['2024-03-01', 'success', 11],
    ]);
    expect(Object.keys(runs[0]!.steps)).toEqual(STEP_IDS);
    expect(runs[2]!.steps).toMatchObject({ run_wf_data_preparation_for_reports: 'success', load_ds_client_segmentation: 'failed', send_flg_to_sap: 'not_started', email_on_failure: 'success' });
    expect(runs[1]!.steps).toMatchObject({ wait_for_success_end: 'waiting', run_sys_kill_all_session_pg: 'not_started' });
    const limited = JSON.parse((await status('--json', '--limit', '2')).out) as unknown[];
    expect(limited).toHaveLength(2);
  });

  it('--date D shows the timeline with durations, and what a waiting sensor waits on', async () => {
    const waiting = await status('--date', '2024-03-03');
    expect(waiting.code).toBe(0);
    expect(waiting.out).toMatch(/^backfill__2024-03-03 {2}running {2}\(attempt 1, load id 13, triggered by backfill\)/);
    expect(waiting.out).toMatch(/✓ get_load_id\s+success\s+\S+ \S+ -> \S+ \S+\s+2 s$/m);
    expect(waiting.out).toMatch(/… wait_for_success_end\s+waiting\s+\S+ \S+ -> -\s+5\dm \d+s so far$/m);
    expect(waiting.out).toMatch(/^ {6}waiting for 2024-03-02, failed .*CHILD_FAILED: failed: it broke\); not checked yet$/m);

    const flag = await status('--date', '2024-03-04');
    expect(flag.out).toMatch(/^ {6}waiting for flag 'l1_to_l2_load_successfull' in md\.dwh_flag for business date 2024-03-03; not checked yet$/m);

    const failed = await status('--date', '2024-03-02');
    expect(failed.out).toMatch(/✗ load_ds_client_segmentation\s+failed\s+.*  3 s  CHILD_FAILED: load_ds_client_segmentation broke$/m);
    expect(failed.out).toMatch(/^failure mail: none queued$/m);

    const json = JSON.parse((await status('--date', '2024-03-03', '--json')).out) as { steps: { step: string; state: string; duration_ms: number }[]; waiting_on: unknown };
    expect(json.waiting_on).toMatchObject({ step: 'wait_for_success_end', previousLogicalDate: '2024-03-02', previousStatus: 'failed', error: { code: 'CHILD_FAILED' } });
    expect(json.steps.find((s) => s.step === 'get_load_id')).toMatchObject({ state: 'success', duration_ms: 2000 });
  });

  it('--limit must be a whole number, and is not for --date', async () => {
    expect((await status('--limit', '0')).err).toMatch(/--limit "0" must be a whole number from 1 to 1000/);
    expect((await status('--limit', '3', '--date', '2024-03-01')).code).toBe(2);
  });
});
