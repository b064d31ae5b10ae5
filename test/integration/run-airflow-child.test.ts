import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { useFixture, type Fixture } from '../helpers/app-fixture.js';
import { startAirflowServer, type TestAirflowServer } from '../helpers/airflow-server.js';

// Run level: a whole run whose reports child is a DAG in Airflow 3, through createApp with every real service.

const PASSWORD = 'Af-Run-Pa55-71c3';
let fx: Fixture;
useFixture((f) => (fx = f));

let af: TestAirflowServer;
beforeAll(async () => {
  af = await startAirflowServer({ user: 'etl', password: PASSWORD, dags: ['reports_dag'] });
});
afterAll(async () => {
  expect(fx.lines.join('')).not.toContain(PASSWORD);
  await af.close();
});

/** The reports child as an airflow child (statement: undefined drops the fixture's SQL default from the file). */
const airflowReports = {
  children: {
    wf_data_preparation_for_reports: {
      kind: 'airflow', statement: undefined, dagId: 'reports_dag', connection: 'airflow_test', pokeIntervalSeconds: 0.02, maxPokeIntervalSeconds: 0.1,
    },
  },
};

describe('run level: an airflow child', () => {
  it('the run triggers the DAG once, waits for it and succeeds', async () => {
    const D = '2024-10-01';
    await fx.startApp(D, { file: airflowReports, env: { L2FLOW_CONN_AIRFLOW_TEST: af.uri(2) } });
    await fx.trigger(D, { flag: true });
    expect(await fx.finished(D)).toMatchObject({ status: 'success', error: null });
    expect(af.count('POST', /\/dagRuns$/)).toBe(1);
    const [run] = [...af.runs.values()];
    expect(run).toMatchObject({ dagId: 'reports_dag', runId: `l2flow__WF_MAIN_DATASETS_LOAD_L2_TO_L2__wf_data_preparation_for_reports__${D}__1`, state: 'success' });
  });

  it('a failed DAG run fails the run, naming the DAG and its run id', async () => {
    const D = '2024-10-02';
    af.reset();
    af.plan('reports_dag', ['running', 'failed']);
    await fx.startApp(D, { file: airflowReports, env: { L2FLOW_CONN_AIRFLOW_TEST: af.uri(2) } });
    await fx.trigger(D, { flag: true });
    const run = await fx.finished(D);
    expect(run).toMatchObject({ status: 'failed', error_info: { code: 'CHILD_FAILED' } });
    expect(run.error).toMatch(new RegExp(`DAG run l2flow__\\S+__${D}__1 of DAG reports_dag failed`));
  });
});
