import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import pino from 'pino';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { startAirflowServer, type TestAirflowServer } from '../helpers/airflow-server.js';
import { until } from '../helpers/process.js';
import { createChildRunner, dagRunIdOf, type AirflowChildConfig, type ChildRunner } from '../../src/services/children/index.js';
import { createDedicatedConnections, type DedicatedConnections } from '../../src/services/db/index.js';
import type { StepContext } from '../../src/services/types.js';

const PASSWORD = 'Airfl0w-S3cret-9f2e';
const USER = 'etl';
const REPORTS = 'wf_data_preparation_for_reports'; // a child the step table knows: its step is run_wf_data_preparation_for_reports
const RUN_PATH = /\/dagRuns$/;

let seq = 0;
const ctx = (): StepContext => ({
  runId: `af-run-${++seq}`, workflowId: 'WF', logicalDate: '2024-03-15', businessDate: '2024-03-14', attempt: 1, loadId: 7,
});
const never = new AbortController().signal;

/** Fast pokes and retries; the defaults (60 s … 600 s) would make every test minutes long. */
function child(over: Partial<AirflowChildConfig> & { dagId: string; connection: string }): AirflowChildConfig {
  return {
    kind: 'airflow', conf: { source: 'l2flow' }, resetDagRun: true, waitForCompletion: true,
    pokeIntervalMs: 20, maxPokeIntervalMs: 80, requestTimeoutMs: 2_000, maxTries: 4, ...over,
  };
}

describe('airflow child workflows against a real HTTP server', () => {
  let db: TestDb;
  let af: TestAirflowServer;
  let connections: DedicatedConnections;
  let runner: ChildRunner;
  const lines: string[] = [];
  const errors: string[] = [];

  beforeAll(async () => {
    db = await createTestDb();
    af = await startAirflowServer({ user: USER, password: PASSWORD, dags: ['reports_dag', 'seg_dag'] });
    connections = createDedicatedConnections({ connectionString: db.uri, max: 1, applicationName: 'l2flow-child' });
    const logger = pino({ level: 'debug' }, { write: (s: string) => void lines.push(s) });
    runner = createChildRunner({
      pool: db.pool,
      dwh: db.pool,
      connections,
      logger,
      airflowConnections: {
        af2: af.uri(1),
        af3: af.uri(2),
        af2_bad: af.uri(1, { password: `${PASSWORD}-old` }),
        af3_bad: af.uri(2, { password: `${PASSWORD}-old` }),
      },
      children: {
        [REPORTS]: child({ dagId: 'reports_dag', connection: 'af2' }),
        v2: child({ dagId: 'seg_dag', connection: 'af3' }),
        no_dag: child({ dagId: 'missing_dag', connection: 'af2' }),
        keep: child({ dagId: 'reports_dag', connection: 'af2', resetDagRun: false }),
        fire_and_forget: child({ dagId: 'reports_dag', connection: 'af3', waitForCompletion: false }),
        slow: child({ dagId: 'seg_dag', connection: 'af2', timeoutMs: 300 }),
        bad_v1: child({ dagId: 'reports_dag', connection: 'af2_bad' }),
        bad_v2: child({ dagId: 'reports_dag', connection: 'af3_bad' }),
      },
    });
  });
  afterEach(() => af.reset());
  afterAll(async () => {
    // Whatever happened, the password never reached a log line or an error, in any form it travels.
    const forms = [PASSWORD, encodeURIComponent(PASSWORD), Buffer.from(`${USER}:${PASSWORD}`).toString('base64')];
    for (const f of forms) {
      expect(lines.join('\n')).not.toContain(f);
      expect(errors.join('\n')).not.toContain(f);
    }
    await af.close();
    await connections.end();
    await db.drop();
  });

  /** Run a child expecting a failure; the error is kept for the secret check. */
  async function failure(name: string, c: StepContext, signal = never): Promise<{ code: string; message: string; retryable: boolean; details?: Record<string, unknown> }> {
    const err = await runner.run(name)(c, signal).then(() => { throw new Error(`${name} succeeded`); }, (e: unknown) => e as never);
    errors.push(JSON.stringify({ message: (err as Error).message, details: (err as { details?: unknown }).details }));
    return err;
  }
  const memoSteps = async (c: StepContext) =>
    (await db.pool.query<{ step: string }>('select step from l2flow.step_memo where run_id = $1 order by step', [c.runId])).rows.map((r) => r.step);

  it('Airflow 2: triggers with basic auth and a deterministic run id, waits for success, and is not run again once recorded', async () => {
    const c = ctx();
    const result = await runner.run(REPORTS)(c, never);
    expect(result).toMatchObject({ kind: 'airflow', dagId: 'reports_dag', dagRunId: `l2flow__WF__${REPORTS}__2024-03-15__1`, state: 'success', resumed: false });
    const trigger = af.requests.find((r) => r.method === 'POST' && RUN_PATH.test(r.path))!;
    expect(trigger).toMatchObject({ path: '/api/v1/dags/reports_dag/dagRuns', authorization: `Basic ${Buffer.from(`${USER}:${PASSWORD}`).toString('base64')}` });
    expect(trigger.body).toEqual({ dag_run_id: dagRunIdOf(c, REPORTS), conf: { source: 'l2flow' } });
    expect(af.count('GET', /dagRuns\//)).toBeGreaterThanOrEqual(3); // queued, running, success
    const seen = af.requests.length;
    expect(await runner.run(REPORTS)(c, never)).toMatchObject({ state: 'success', resumed: true });
    expect(af.requests).toHaveLength(seen);
    expect(await memoSteps(c)).toEqual([`child:${REPORTS}`, `child:${REPORTS}:dag_run`]);
  });

  it('Airflow 3: a token from /auth/token as Bearer, logical_date null, a new token when the old one expires (401)', async () => {
    expect(await runner.run('v2')(ctx(), never)).toMatchObject({ state: 'success' });
    const trigger = af.requests.find((r) => r.method === 'POST' && RUN_PATH.test(r.path))!;
    expect(trigger).toMatchObject({ path: '/api/v2/dags/seg_dag/dagRuns', authorization: 'Bearer tok-1' });
    expect(trigger.body).toMatchObject({ logical_date: null, conf: { source: 'l2flow' } });
    af.expireTokens();
    expect(await runner.run('v2')(ctx(), never)).toMatchObject({ state: 'success' });
    expect(af.count('POST', /^\/auth\/token$/)).toBe(2);
    expect(af.requests.filter((r) => r.path.startsWith('/api/')).map((r) => r.authorization).at(-1)).toBe('Bearer tok-2');
  });

  it('refused credentials fail at once, naming the connection and user, never the password', async () => {
    for (const [name, endpoint] of [['bad_v1', /GET \/api\/v1\/dags/], ['bad_v2', /POST \/auth\/token/]] as const) {
      const e = await failure(name, ctx());
      expect(e).toMatchObject({ code: 'CHILD_FAILED', retryable: false });
      expect(e.message).toMatch(/connection "af[23]_bad" \(user "etl"\)/);
      expect(e.message).toMatch(endpoint);
    }
  });

  it('a failed DAG run fails the step naming the DAG and the run id, and gives the run up for a retry of the step', async () => {
    af.plan('reports_dag', ['queued', 'running', 'failed']);
    const c = ctx();
    const e = await failure(REPORTS, c);
    expect(e).toMatchObject({ code: 'CHILD_FAILED', retryable: false, details: { dagId: 'reports_dag', dagRunId: dagRunIdOf(c, REPORTS), state: 'failed' } });
    expect(e.message).toContain(`DAG run ${dagRunIdOf(c, REPORTS)} of DAG reports_dag failed`);
    expect(await memoSteps(c)).toEqual([]);
    // The step retried in the same attempt: the failed run is cleared (resetDagRun) and runs again.
    af.plan('reports_dag', ['queued', 'success']);
    expect(await runner.run(REPORTS)(c, never)).toMatchObject({ state: 'success' });
    expect(af.runs.get(`reports_dag/${dagRunIdOf(c, REPORTS)}`)!.clears).toBe(1);
    expect(af.count('POST', RUN_PATH)).toBe(1);
  });

  it('5xx answers are retried with backoff until Airflow answers', async () => {
    af.inject({ method: 'POST', path: RUN_PATH, status: 503, times: 2 });
    af.inject({ method: 'GET', path: /dagRuns\//, status: 502, times: 2 });
    expect(await runner.run(REPORTS)(ctx(), never)).toMatchObject({ state: 'success' });
    expect(af.count('POST', RUN_PATH)).toBe(3);
    expect(af.runs.size).toBe(1);
  });

  it('a DAG Airflow does not know fails at once, naming the dagId', async () => {
    const e = await failure('no_dag', ctx());
    expect(e).toMatchObject({ code: 'CHILD_FAILED', retryable: false, details: { dagId: 'missing_dag', httpStatus: 404 } });
    expect(e.message).toMatch(/has no DAG "missing_dag"/);
  });

  it('409 on trigger (the run appeared meanwhile) attaches to it instead of failing or triggering again', async () => {
    const c = ctx();
    af.seed('reports_dag', dagRunIdOf(c, REPORTS), 'running');
    af.inject({ method: 'GET', path: /dagRuns\//, status: 404 }); // it was not there when we looked
    const run = af.runs.get(`reports_dag/${dagRunIdOf(c, REPORTS)}`)!;
    setTimeout(() => (run.state = 'success'), 100);
    expect(await runner.run(REPORTS)(c, never)).toMatchObject({ state: 'success' });
    expect(af.count('POST', RUN_PATH)).toBe(1);
    expect(run.clears).toBe(0);
  });

  it('a finished run this step did not trigger is cleared with resetDagRun, and refused without it', async () => {
    const c = ctx();
    af.seed('reports_dag', dagRunIdOf(c, REPORTS), 'failed');
    expect(await runner.run(REPORTS)(c, never)).toMatchObject({ state: 'success' });
    expect(af.runs.get(`reports_dag/${dagRunIdOf(c, REPORTS)}`)!.clears).toBe(1);
    expect(af.count('POST', RUN_PATH)).toBe(0);
    const k = ctx();
    af.seed('reports_dag', dagRunIdOf(k, 'keep'), 'success');
    const e = await failure('keep', k);
    expect(e.message).toMatch(/already exists in Airflow \(state success\) and this step did not trigger it: set resetDagRun: true/);
  });

  it('without waitForCompletion the step ends once the run is triggered', async () => {
    expect(await runner.run('fire_and_forget')(ctx(), never)).toMatchObject({ state: 'queued' });
    expect(af.count('POST', RUN_PATH)).toBe(1);
  });

  it('a step let go by its process (shutdown, take-over) leaves the DAG run running; the resumed step re-attaches: ONE trigger', async () => {
    const c = ctx();
    await db.pool.query(`insert into l2flow.run (run_id, workflow_id, logical_date, business_date, status) values ($1, 'WF', '2024-03-15', '2024-03-14', 'running')`, [c.runId]);
    await db.pool.query(`insert into l2flow.step (run_id, step, attempt, status, started_at) values ($1, 'run_wf_data_preparation_for_reports', 1, 'running', now())`, [c.runId]);
    af.plan('reports_dag', ['queued', 'running', 'running', 'running', 'running', 'running', 'running', 'running', 'success']);
    const stop = new AbortController();
    const first = runner.run(REPORTS)(c, stop.signal).catch((e: unknown) => e as { code: string; message: string });
    await until('the trigger', async () => af.count('POST', RUN_PATH) === 1 || null, 5_000);
    stop.abort(); // what XState does to an in-flight step when the process stops
    expect(await first).toMatchObject({ code: 'ABORTED', message: expect.stringMatching(/released by this process/) });
    expect(af.count('PATCH', /./)).toBe(0);
    expect(await runner.run(REPORTS)(c, never)).toMatchObject({ state: 'success', resumed: false });
    expect(af.count('POST', RUN_PATH)).toBe(1);
    expect(af.runs.get(`reports_dag/${dagRunIdOf(c, REPORTS)}`)!.clears).toBe(0);
  });

  it('a cancel marks the DAG run failed in Airflow', async () => {
    const c = ctx();
    af.plan('reports_dag', ['queued', 'running']);
    const stop = new AbortController();
    const done = runner.run(REPORTS)(c, stop.signal).catch((e: unknown) => e as { code: string; message: string });
    await until('the run to be polled', async () => af.count('GET', /dagRuns\//) >= 2 || null, 5_000);
    stop.abort();
    expect(await done).toMatchObject({ code: 'ABORTED', message: expect.stringMatching(/cancelled: DAG run .* was marked failed/) });
    expect(af.requests.find((r) => r.method === 'PATCH')).toMatchObject({ body: { state: 'failed' } });
    expect(af.runs.get(`reports_dag/${dagRunIdOf(c, REPORTS)}`)!.state).toBe('failed');
    expect(await memoSteps(c)).toEqual([]);
  });

  it('a timeout fails the step (CHILD_TIMEOUT, retryable) and marks the DAG run failed', async () => {
    af.plan('seg_dag', ['queued', 'running']);
    const c = ctx();
    const e = await failure('slow', c);
    expect(e).toMatchObject({ code: 'CHILD_TIMEOUT', retryable: true, details: { dagId: 'seg_dag', dagRunId: dagRunIdOf(c, 'slow') } });
    expect(af.runs.get(`seg_dag/${dagRunIdOf(c, 'slow')}`)!.state).toBe('failed');
  });

  it('an answer echoing the credentials is scrubbed before it reaches the error', async () => {
    const basic = Buffer.from(`${USER}:${PASSWORD}`).toString('base64');
    af.inject({ method: 'POST', path: RUN_PATH, status: 400, body: { detail: `bad request from ${USER}:${PASSWORD} (Basic ${basic})` } });
    const e = await failure(REPORTS, ctx());
    expect(e).toMatchObject({ code: 'CHILD_FAILED', retryable: false, details: { httpStatus: 400 } });
    expect(e.message).toMatch(/answered 400 Bad Request to POST \/api\/v1\/dags\/reports_dag\/dagRuns: .*etl:\*\*\*/);
  });
});

