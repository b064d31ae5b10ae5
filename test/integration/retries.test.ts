import { describe, expect, it } from 'vitest';
import { useFixture, type Fixture, type FileOverrides } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';

// Per-step retries through the whole runtime: real PostgreSQL child statements, real SMTP for the failure mail.

let fx: Fixture;
useFixture((f) => (fx = f));

const SEG = 'load_ds_client_segmentation';

/** A child statement that fails its first `n` calls (a sequence survives the rolled-back transaction), then succeeds. */
async function flakyChild(name: string, n: number): Promise<FileOverrides['children']> {
  await fx.db.pool.query(`create sequence if not exists public.${name}_seq`);
  await fx.db.pool.query(`create or replace function public.${name}() returns void language plpgsql as $$
    begin if nextval('public.${name}_seq') <= ${n} then raise exception 'flaky child failed'; end if; end $$`);
  return { l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: `select public.${name}()` } };
}

const withRetries = (children: FileOverrides['children'], retries: number, retryDelaySeconds: number) =>
  ({ children, steps: { [SEG]: { retries, retryDelaySeconds, maxRetryDelaySeconds: 60 } } }) as FileOverrides;

interface TryRow { try_number: number; status: string; started_at: Date; finished_at: Date | null; retry_at: Date | null; error: { code: string; message: string } | null }

async function tries(date: string, step = SEG): Promise<TryRow[]> {
  return (await fx.db.pool.query<TryRow>(
    `select s.try_number, s.status, s.started_at, s.finished_at, s.retry_at, s.error from l2flow.step s join l2flow.run r using (run_id)
      where r.logical_date = $1 and s.step = $2 order by s.attempt, s.try_number`, [date, step])).rows;
}

describe('per-step retries', () => {
  it('a child failing twice with retries 2: the run succeeds; three tries in the step history, the failed ones with their error', async () => {
    const D = '2024-10-01';
    await fx.startApp(D, { file: withRetries(await flakyChild('flaky_a', 2), 2, 0.3) });
    await fx.trigger(D, { flag: true });
    expect(await fx.finished(D, 30_000)).toMatchObject({ status: 'success', error: null });
    const rows = await tries(D);
    expect(rows.map((r) => [r.try_number, r.status])).toEqual([[1, 'failed'], [2, 'failed'], [3, 'success']]);
    for (const r of rows.slice(0, 2)) expect(r.error).toMatchObject({ code: 'CHILD_FAILED', message: expect.stringContaining('flaky child failed') });
    // Backoff 0.3 s then 0.6 s: no try before its time.
    expect(rows[1]!.started_at.getTime() - rows[0]!.finished_at!.getTime()).toBeGreaterThanOrEqual(290);
    expect(rows[2]!.started_at.getTime() - rows[1]!.finished_at!.getTime()).toBeGreaterThanOrEqual(590);
    expect(fx.mails(D)).toHaveLength(0);
    const status = await fx.status(D);
    expect(status.out).toMatch(new RegExp(`✗ ${SEG}\\s+try 2\\s+failed .*CHILD_FAILED`));
    expect(status.out).toMatch(new RegExp(`✓ ${SEG}\\s+try 3\\s+success`));
  });

  it('retries 1 and a child that always fails: the run fails after two tries, with one failure mail', async () => {
    const D = '2024-10-02';
    await fx.startApp(D, { file: withRetries(await flakyChild('flaky_b', 99), 1, 0.2) });
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D, 30_000);
    expect(run.status).toBe('failed');
    expect(run.error_info).toMatchObject({ code: 'CHILD_FAILED' });
    expect((await tries(D)).map((r) => [r.try_number, r.status])).toEqual([[1, 'failed'], [2, 'failed']]);
    await until('the failure mail', async () => fx.mails(D).length > 0, 15_000);
    await new Promise((r) => setTimeout(r, 500));
    expect(fx.mails(D)).toHaveLength(1);
  });

  it('a restart during the retry wait neither loses nor shortens it: the next try starts at the persisted time', async () => {
    const D = '2024-10-03';
    const file = withRetries(await flakyChild('flaky_c', 1), 1, 4);
    const first = await fx.startApp(D, { file });
    await fx.trigger(D, { flag: true });
    const [waiting] = await until('try 1 to wait for its retry', async () => {
      const rows = await tries(D);
      return rows[0]?.retry_at ? rows : null;
    }, 20_000);
    const retryAt = waiting!.retry_at!.getTime();
    expect(retryAt - waiting!.finished_at!.getTime()).toBeGreaterThanOrEqual(3_990);
    await first.stop();
    // The fixture stops every app it started after the test; this one is stopped already.
    first.stop = async () => undefined;
    await fx.startApp(D, { file });
    expect(await fx.finished(D, 30_000)).toMatchObject({ status: 'success' });
    const rows = await tries(D);
    expect(rows.map((r) => [r.try_number, r.status])).toEqual([[1, 'failed'], [2, 'success']]);
    expect(rows[1]!.started_at.getTime()).toBeGreaterThanOrEqual(retryAt);
  });
});
