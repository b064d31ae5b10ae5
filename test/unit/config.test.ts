import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigError, connectionUris, describeConfig, loadConfig, redactUri, stateIsWarehouse, STEP_CHILDREN } from '../../src/runtime/config.js';

const SECRET = 'S3cr3t-Pa55';
const DWH = `postgres://dwh_user:${SECRET}@db.example:5432/dwh`;
const SAP = `https://sap_user:${SECRET}@sap.example/readiness`;
const SMTP = `smtp://mail_user:${SECRET}@mail.example:587`;

const dir = mkdtempSync(path.join(os.tmpdir(), 'l2flow-config-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let fileNo = 0;
/** Write a config file under the temp dir; returns its path. */
function file(text: string, ext = 'yaml'): string {
  const p = path.join(dir, `cfg-${++fileNo}.${ext}`);
  writeFileSync(p, text);
  return p;
}

const CHILDREN_YAML = `children:
  wf_data_preparation_for_reports:
    kind: sql
    statement: "call l2.prep($1::date, $2::bigint)"
  l1_to_l2_p_load_data_ds_client_segmentation_full:
    kind: sql
    statement: "call l2.seg($1::date)"
    timeoutSeconds: 3600
`;
const childrenFile = file(CHILDREN_YAML);

/** A complete environment: every required setting present, children from a YAML file. */
function fullEnv(over: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    L2FLOW_CONN_DWH: DWH,
    L2FLOW_CONN_SAP_CONN: SAP,
    L2FLOW_CONN_SMTP_DEFAULT: SMTP,
    EMAIL_RECIPIENTS: 'dwh-team@bank.example, oncall@bank.example',
    L2FLOW_CONFIG: childrenFile,
  };
  for (const [k, v] of Object.entries(over)) {
    if (v === undefined) delete env[k];
    else env[k] = v;
  }
  return env;
}

/** The ConfigError `fn` throws; fails the test when it throws anything else or nothing. */
function configError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    const e = err as ConfigError;
    // Whatever went wrong, a password never reaches the message.
    expect(e.message).not.toContain(SECRET);
    expect(e.message).toContain(e.key);
    return e;
  }
  throw new Error('expected a ConfigError, but loadConfig succeeded');
}

describe('loadConfig: defaults and sources', () => {
  it('reads expected-by times, the wait_for_success_end policy and the completion flag, and says how to fix a bad one', () => {
    const file = {
      workflow: { expectedBy: '07:30', stepExpectedBy: { send_flg_to_sap: '06:45:30' } },
      sensors: { wait_for_success_end: { whenMissing: 'pass', whenFailed: 'fail', blockedMailAfterSeconds: 1800 } },
      completionFlag: { enabled: true },
    };
    const c = loadConfig(fullEnv(), { file, scope: 'dwh' });
    expect(c.deadlines).toEqual({ expectedBy: '07:30', steps: { send_flg_to_sap: '06:45:30' } });
    expect(c.successEndSensor).toMatchObject({ whenMissing: 'pass', whenFailed: 'fail', blockedMailAfterMs: 1_800_000 });
    expect(c.completionFlag).toEqual({ flagTable: 'md.dwh_flag', flagCode: 'l2_datasets_load_successful' });
    expect(loadConfig(fullEnv({ L2FLOW_EXPECTED_BY: '08:00' })).deadlines.expectedBy).toBe('08:00');
    expect(configError(() => loadConfig(fullEnv({ L2FLOW_EXPECTED_BY: '7:30' }))).message).toMatch(/not a time of day: write HH:MM or HH:MM:SS/);
    expect(configError(() => loadConfig(fullEnv(), { scope: 'dwh', file: { workflow: { stepExpectedBy: { send_flag: '06:00' } } } })).message).toMatch(/unknown step \(send_flag\)/);
    expect(configError(() => loadConfig(fullEnv(), { scope: 'dwh', file: { sensors: { wait_for_success_end: { whenFailed: 'skip' } } } })).message).toMatch(/must be wait or fail/);
  });

  it('fills the SPEC defaults', () => {
    const c = loadConfig(fullEnv());
    expect(c.workflowId).toBe('WF_MAIN_DATASETS_LOAD_L2_TO_L2');
    expect(c.timezone).toBe('Asia/Tashkent');
    expect(c.startDate).toBe('2023-12-22');
    expect(c.maxActiveRuns).toBe(20);
    expect(c.flagSensor).toEqual({ flagTable: 'md.dwh_flag', flagCode: 'l1_to_l2_load_successfull', pokeIntervalMs: 60_000, timeoutMs: 7 * 24 * 3600 * 1000, notify: true });
    expect(c.successEndSensor).toEqual({
      pokeIntervalMs: 100_000, timeoutMs: 7 * 24 * 3600 * 1000, executionDeltaDays: 1, whenMissing: 'wait', whenFailed: 'wait', blockedMailAfterMs: null,
    });
    expect(c.deadlines).toEqual({ expectedBy: null, steps: {} });
    expect(c.completionFlag).toBeNull();
    expect(c.pools).toEqual({ dwh_l2: { slots: 1 } });
    expect(c.children.sys_kill_all_session_pg).toEqual({ kind: 'builtin', name: 'sys_kill_all_session_pg', idleSeconds: 600 });
    expect(c.children[STEP_CHILDREN.run_wf_data_preparation_for_reports]).toEqual({ kind: 'sql', statement: 'call l2.prep($1::date, $2::bigint)', transactional: true });
    expect(c.children[STEP_CHILDREN.load_ds_client_segmentation]).toEqual({ kind: 'sql', statement: 'call l2.seg($1::date)', timeoutMs: 3_600_000, transactional: true });
    expect(c.connectionIds).toEqual({ dwh: 'dwh', state: 'state', sap: 'sap_conn', smtp: 'smtp_default' });
    // No state connection: l2flow's tables live in the warehouse.
    expect(c.connections).toEqual({ dwh: DWH, state: DWH, sap: SAP, smtp: SMTP });
    expect(c.email.recipients).toEqual(['dwh-team@bank.example', 'oncall@bank.example']);
    expect(c.logLevel).toBe('info');
  });

  it('falls back to AIRFLOW_CONN_<ID>, and L2FLOW_CONN_<ID> wins when both are set', () => {
    const airflowDwh = 'postgresql://af:pw@af-db.example/dwh';
    const c = loadConfig(fullEnv({ L2FLOW_CONN_DWH: undefined, AIRFLOW_CONN_DWH: airflowDwh }));
    expect(c.connections.dwh).toBe(airflowDwh);
    const both = loadConfig(fullEnv({ AIRFLOW_CONN_DWH: airflowDwh }));
    expect(both.connections.dwh).toBe(DWH);
    // An empty L2FLOW_CONN_ counts as unset, so the Airflow variable still applies.
    expect(loadConfig(fullEnv({ L2FLOW_CONN_DWH: '', AIRFLOW_CONN_DWH: airflowDwh })).connections.dwh).toBe(airflowDwh);
  });

  it('resolves custom *_CONN_ID values, upper-cased', () => {
    const c = loadConfig(
      fullEnv({
        DWH_CONN_ID: 'warehouse_prod',
        SAP_CONN_ID: 'sap_http',
        SMTP_CONN_ID: 'mail_relay',
        L2FLOW_CONN_DWH: undefined,
        L2FLOW_CONN_SAP_CONN: undefined,
        L2FLOW_CONN_SMTP_DEFAULT: undefined,
        L2FLOW_CONN_WAREHOUSE_PROD: DWH,
        AIRFLOW_CONN_SAP_HTTP: SAP,
        L2FLOW_CONN_MAIL_RELAY: SMTP,
      }),
    );
    expect(c.connectionIds).toEqual({ dwh: 'warehouse_prod', state: 'state', sap: 'sap_http', smtp: 'mail_relay' });
    expect(c.connections).toEqual({ dwh: DWH, state: DWH, sap: SAP, smtp: SMTP });
  });

  it('lets the environment win over the file (timezone, recipients) and reads the rest from the file', () => {
    const f = file(`${CHILDREN_YAML}workflow:
  timezone: Europe/Berlin
  startDate: "2024-01-01"
  maxActiveRuns: 3
email:
  recipients: [file@bank.example]
  from: l2flow@bank.example
pools:
  dwh_l2: { slots: 2 }
  other: { slots: 4 }
sensors:
  wait_for_l2_full_load: { pokeIntervalSeconds: 5, timeoutSeconds: 600, flagTable: md.my_flag }
  wait_for_success_end: { pokeIntervalSeconds: 7, executionDeltaDays: 2 }
logLevel: debug
`);
    const fromFile = loadConfig(fullEnv({ L2FLOW_CONFIG: f, EMAIL_RECIPIENTS: undefined }));
    expect(fromFile.timezone).toBe('Europe/Berlin');
    expect(fromFile.startDate).toBe('2024-01-01');
    expect(fromFile.maxActiveRuns).toBe(3);
    expect(fromFile.email).toEqual({ recipients: ['file@bank.example'], from: 'l2flow@bank.example' });
    expect(fromFile.pools).toEqual({ dwh_l2: { slots: 2 }, other: { slots: 4 } });
    expect(fromFile.flagSensor).toMatchObject({ flagTable: 'md.my_flag', pokeIntervalMs: 5000, timeoutMs: 600_000 });
    expect(fromFile.successEndSensor).toMatchObject({ pokeIntervalMs: 7000, executionDeltaDays: 2 });
    expect(fromFile.logLevel).toBe('debug');

    const envWins = loadConfig(fullEnv({ L2FLOW_CONFIG: f, L2FLOW_TIMEZONE: 'UTC', EMAIL_RECIPIENTS: 'env@bank.example' }));
    expect(envWins.timezone).toBe('UTC');
    expect(envWins.email.recipients).toEqual(['env@bank.example']);
  });

  it('reads connections from the file, and the environment still wins', () => {
    const fileDwh = 'postgres://file_user:pw@file-db.example/dwh';
    const f = file(
      JSON.stringify({
        connections: { dwh: fileDwh, sap_conn: 'https://sap.example/flag?token=abc123', smtp_default: 'smtps://mail.example:465' },
        children: {
          wf_data_preparation_for_reports: { kind: 'sql', statement: 'call l2.prep($1, $2)' },
          l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'call l2.seg($1)' },
        },
      }),
      'json',
    );
    const env = { L2FLOW_CONFIG: f, EMAIL_RECIPIENTS: 'a@bank.example' };
    const c = loadConfig(env);
    expect(c.connections).toEqual({ dwh: fileDwh, state: fileDwh, sap: 'https://sap.example/flag?token=abc123', smtp: 'smtps://mail.example:465' });
    expect(loadConfig({ ...env, AIRFLOW_CONN_DWH: DWH }).connections.dwh).toBe(DWH);
  });

  it('accepts JSON and an empty YAML file', () => {
    expect(loadConfig(fullEnv({ L2FLOW_CONFIG: file('', 'yml') }), { scope: 'dwh' }).timezone).toBe('Asia/Tashkent');
    expect(loadConfig(fullEnv({ L2FLOW_CONFIG: file('{"workflow": {"timezone": "UTC"}}', 'json') }), { scope: 'dwh' }).timezone).toBe('UTC');
  });

  it("scope 'dwh' needs only the warehouse connection", () => {
    const c = loadConfig({ L2FLOW_CONN_DWH: DWH }, { scope: 'dwh' });
    expect(c.connections).toEqual({ dwh: DWH, state: DWH, sap: '', smtp: '' });
    expect(c.email.recipients).toEqual([]);
    const e = configError(() => loadConfig({}, { scope: 'dwh' }));
    expect(e.key).toBe('L2FLOW_CONN_DWH');
  });
});

describe('loadConfig: each missing required setting names its key and the fix', () => {
  it.each([
    ['L2FLOW_CONN_DWH', 'DWH_CONN_ID', 'postgres://'],
    ['L2FLOW_CONN_SAP_CONN', 'SAP_CONN_ID', 'https://'],
    ['L2FLOW_CONN_SMTP_DEFAULT', 'SMTP_CONN_ID', 'smtp://'],
  ])('%s', (key, idKey, example) => {
    const e = configError(() => loadConfig(fullEnv({ [key]: undefined })));
    expect(e.key).toBe(key);
    expect(e.message).toContain(`export ${key}=${example}`);
    expect(e.message).toContain(idKey);
    expect(e.message).toContain(key.replace('L2FLOW_', 'AIRFLOW_'));
  });

  it('a custom connection id names its own variable', () => {
    const e = configError(() => loadConfig(fullEnv({ DWH_CONN_ID: 'warehouse' })));
    expect(e.key).toBe('L2FLOW_CONN_WAREHOUSE');
    expect(e.message).toMatch(/connection "warehouse".*DWH_CONN_ID/);
  });

  it.each([['unset', undefined], ['empty', ''], ['only commas', ' , ,']])('EMAIL_RECIPIENTS %s', (_what, value) => {
    const e = configError(() => loadConfig(fullEnv({ EMAIL_RECIPIENTS: value })));
    expect(e.key).toBe('EMAIL_RECIPIENTS');
    expect(e.message).toMatch(/export EMAIL_RECIPIENTS=\S+@\S+/);
  });

  it('a recipient that is not an address', () => {
    const e = configError(() => loadConfig(fullEnv({ EMAIL_RECIPIENTS: 'ok@bank.example,dwh team' })));
    expect(e.key).toBe('EMAIL_RECIPIENTS');
    expect(e.message).toContain('"dwh team" is not an e-mail address');
  });

  it.each(Object.values(STEP_CHILDREN).filter((c) => c !== 'sys_kill_all_session_pg'))('sql child %s', (child) => {
    const other = Object.values(STEP_CHILDREN).find((c) => c !== child && c !== 'sys_kill_all_session_pg')!;
    const f = file(`children:\n  ${other}:\n    kind: sql\n    statement: "call l2.x($1)"\n`);
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: f })));
    expect(e.key).toBe(`children.${child}`);
    expect(e.message).toContain(`${child}:\n      kind: sql\n      statement:`);
  });

  it('no config file at all: the first missing child says to add it', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: undefined })));
    expect(e.key).toMatch(/^children\./);
    expect(e.message).toContain('L2FLOW_CONFIG');
  });
});

describe('loadConfig: malformed connection URIs never echo the password', () => {
  it.each([
    ['no scheme', `dwh_user:${SECRET}@db.example/dwh`, /is not a URI/],
    ['wrong scheme', `mysql://dwh_user:${SECRET}@db.example/dwh`, /scheme "mysql".*postgres:\/\//],
    ['http for the warehouse', `https://dwh_user:${SECRET}@db.example/dwh`, /scheme "https"/],
    ['bad port', `postgres://dwh_user:${SECRET}@db.example:54x2/dwh`, /not a valid URI/],
    ['no host', `postgres://dwh_user:${SECRET}@/dwh`, /no host|not a valid URI/],
    ['bad percent-encoding', `postgres://dwh_user:${SECRET}%zz@db.example/dwh`, /percent-encoded password/],
  ])('dwh: %s', (_what, uri, problem) => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONN_DWH: uri })));
    expect(e.key).toBe('L2FLOW_CONN_DWH');
    expect(e.message).toMatch(problem);
    expect(e.message).toContain('postgres://user:password@host:5432/dwh');
  });

  it('names AIRFLOW_CONN_<ID> when that is where the bad URI came from', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONN_DWH: undefined, AIRFLOW_CONN_DWH: `mysql://u:${SECRET}@h/db` })));
    expect(e.key).toBe('AIRFLOW_CONN_DWH');
  });

  it('names the file key when the bad URI came from the file', () => {
    const f = file(`${CHILDREN_YAML}connections:\n  dwh: "mysql://u:${SECRET}@h/db"\n`);
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONN_DWH: undefined, L2FLOW_CONFIG: f })));
    expect(e.key).toBe('connections.dwh');
    expect(e.source).toBe(path.basename(f));
  });

  it.each([
    ['sap', 'L2FLOW_CONN_SAP_CONN', `ftp://u:${SECRET}@sap.example/x`, /scheme "ftp"/],
    ['sap', 'L2FLOW_CONN_SAP_CONN', `https://u:${SECRET}@sap.example/x?__extra__={not-json-${SECRET}`, /__extra__/],
    ['smtp', 'L2FLOW_CONN_SMTP_DEFAULT', `https://u:${SECRET}@mail.example:587`, /scheme "https"/],
    ['smtp', 'L2FLOW_CONN_SMTP_DEFAULT', `smtp://u:${SECRET}@mail.example:587/path`, /must not have a path/],
    ['smtp', 'L2FLOW_CONN_SMTP_DEFAULT', `smtp://u:${SECRET}@mail.example:587?secure=maybe`, /secure/],
  ])('%s: %s', (_what, key, uri, problem) => {
    const e = configError(() => loadConfig(fullEnv({ [key]: uri })));
    expect(e.key).toBe(key);
    expect(e.message).toMatch(problem);
  });
});

describe('loadConfig: invalid values', () => {
  it('a bad timezone, from the environment or the file', () => {
    let e = configError(() => loadConfig(fullEnv({ L2FLOW_TIMEZONE: 'Asia/Tashkentt' })));
    expect(e.key).toBe('L2FLOW_TIMEZONE');
    expect(e.message).toMatch(/"Asia\/Tashkentt" is not an IANA time zone: write e\.g\. Asia\/Tashkent/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('workflow: { timezone: Mars/Olympus }') }), { scope: 'dwh' }));
    expect(e.key).toBe('workflow.timezone');
  });

  it.each(['2024-02-30', '2023-13-01', '22.12.2023', '2024-2-3'])('a bad start date %s', (d) => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_START_DATE: d })));
    expect(e.key).toBe('L2FLOW_START_DATE');
    expect(e.message).toContain('write YYYY-MM-DD');
    const inFile = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file(`workflow: { startDate: "${d}" }`) }), { scope: 'dwh' }));
    expect(inFile.key).toBe('workflow.startDate');
  });

  it.each([
    ['sensors.wait_for_l2_full_load.pokeIntervalSeconds', 'sensors:\n  wait_for_l2_full_load:\n    pokeIntervalSeconds: 0\n', /greater than 0/],
    ['sensors.wait_for_success_end.pokeIntervalSeconds', 'sensors:\n  wait_for_success_end:\n    pokeIntervalSeconds: -5\n', /greater than 0/],
    ['sensors.wait_for_success_end.timeoutSeconds', 'sensors:\n  wait_for_success_end:\n    timeoutSeconds: -1\n', /greater than 0/],
    ['sensors.wait_for_success_end.executionDeltaDays', 'sensors:\n  wait_for_success_end:\n    executionDeltaDays: 0\n', /greater than 0/],
    ['sensors.wait_for_l2_full_load.pokeIntervalSeconds', 'sensors:\n  wait_for_l2_full_load:\n    pokeIntervalSeconds: "60"\n', /remove the quotes/],
    ['sensors.wait_for_l2_full_load.pokeIntervalSeconds', 'sensors:\n  wait_for_l2_full_load:\n    pokeIntervalSeconds: 3000000\n', /at most 2147483 seconds/],
    ['pools.dwh_l2.slots', 'pools:\n  dwh_l2: { slots: 0 }\n', /greater than 0/],
    ['pools.dwh_l2.slots', 'pools:\n  dwh_l2: { slots: 1.5 }\n', /whole number/],
    ['sap.retryBaseDelayMs', 'sap:\n  retryBaseDelayMs: 0\n', /greater than 0 milliseconds/],
    ['workflow.maxActiveRuns', 'workflow:\n  maxActiveRuns: -1\n', /greater than 0/],
    ['children.x.timeoutSeconds', 'children:\n  x: { kind: sql, statement: "call a()", timeoutSeconds: 0 }\n', /greater than 0 seconds/],
    ['logLevel', 'logLevel: verbose\n', /one of "fatal"/],
  ])('%s in the file', (key, yaml, problem) => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file(yaml) }), { scope: 'dwh' }));
    expect(e.key).toBe(key);
    expect(e.message).toMatch(problem);
  });

  it.each([
    ['L2FLOW_FLAG_POKE_INTERVAL_SECONDS', '0'],
    ['L2FLOW_FLAG_POKE_INTERVAL_SECONDS', '-60'],
    ['L2FLOW_FLAG_POKE_INTERVAL_SECONDS', 'sixty'],
    ['L2FLOW_MAX_ACTIVE_RUNS', '0'],
    ['L2FLOW_MAX_ACTIVE_RUNS', '2.5'],
  ])('%s=%s in the environment', (key, value) => {
    const e = configError(() => loadConfig(fullEnv({ [key]: value })));
    expect(e.key).toBe(key);
    expect(e.message).toMatch(new RegExp(`write e\\.g\\. ${key}=\\d+`));
  });

  it('an unknown log level in the environment', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_LOG_LEVEL: 'verbose' })));
    expect(e.key).toBe('L2FLOW_LOG_LEVEL');
    expect(e.message).toContain('debug');
  });

  it('an unknown child kind names the kinds there are', () => {
    const f = file(`${CHILDREN_YAML}  extra_child:\n    kind: dagster\n    dagId: x\n`);
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: f })));
    expect(e.key).toBe('children.extra_child.kind');
    expect(e.source).toBe(path.basename(f));
    expect(e.message).toMatch(/unknown child kind "dagster": write kind: sql .*, kind: airflow .* or kind: builtin/);
  });

  it('an airflow child: defaults in ms, its connection resolved like the others, the API version from the URI', () => {
    const f = file(`${CHILDREN_YAML}  extra_child:\n    kind: airflow\n    dagId: reports_dag\n    connection: airflow_prod\n    timeoutSeconds: 7200\n`);
    const uri = `http://etl:${SECRET}@airflow.bank.example:8080/?api_version=2`;
    const cfg = loadConfig(fullEnv({ L2FLOW_CONFIG: f, AIRFLOW_CONN_AIRFLOW_PROD: uri }));
    expect(cfg.children.extra_child).toEqual({
      kind: 'airflow', dagId: 'reports_dag', connection: 'airflow_prod', conf: {}, resetDagRun: true, waitForCompletion: true,
      pokeIntervalMs: 60_000, maxPokeIntervalMs: 600_000, requestTimeoutMs: 30_000, maxTries: 5, timeoutMs: 7_200_000,
    });
    expect(cfg.airflowConnections).toEqual({ airflow_prod: uri });
    expect(connectionUris(cfg)).toContain(uri);
    expect(JSON.stringify(describeConfig(cfg))).not.toContain(SECRET);
  });

  it('an airflow child without a connection, with an unset one, or with no API version says what to write', () => {
    const child = (extra: string) => file(`${CHILDREN_YAML}  extra_child:\n    kind: airflow\n    dagId: reports_dag\n${extra}`);
    let e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: child('') })));
    expect(e.key).toBe('children.extra_child.connection');
    expect(e.message).toMatch(/connection id/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: child('    connection: af\n') })));
    expect(e.key).toBe('L2FLOW_CONN_AF');
    expect(e.message).toMatch(/named by children\.extra_child\.connection.*export L2FLOW_CONN_AF=http:/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: child('    connection: af\n'), AIRFLOW_CONN_AF: `http://etl:${SECRET}@af:8080/` })));
    expect(e.key).toBe('AIRFLOW_CONN_AF');
    expect(e.message).toMatch(/child workflow extra_child does not say which Airflow API.*api_version=1/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: child('    connection: af\n    apiVersion: 1\n'), AIRFLOW_CONN_AF: `http://etl:${SECRET}@af:8080/api/v2` })));
    expect(e.message).toMatch(/says API version 1 and 2/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: child('    connection: af\n    apiVersion: 3\n') })));
    expect(e.key).toBe('children.extra_child.apiVersion');
    expect(e.message).toMatch(/must be 1 \(Airflow 2, \/api\/v1\) or 2/);
  });

  it('a child without kind, without statement, or with a wrong builtin name', () => {
    let e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('children:\n  x: { statement: "call a()" }\n') })));
    expect(e.key).toBe('children.x.kind');
    expect(e.message).toMatch(/kind is missing: write kind: sql/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('children:\n  x: { kind: sql }\n') })));
    expect(e.key).toBe('children.x.statement');
    expect(e.message).toMatch(/must be a SQL statement/);
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('children:\n  x: { kind: builtin, name: kill_everything }\n') })));
    expect(e.key).toBe('children.x.name');
    expect(e.message).toContain('sys_kill_all_session_pg');
  });

  it('a sql child referencing a parameter that does not exist', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('children:\n  x: { kind: sql, statement: "call a($1, $3)" }\n') })));
    expect(e.key).toBe('children.x.statement');
    expect(e.message).toMatch(/only \$1 .* and \$2/);
  });

  it('an unknown top-level key lists the valid ones', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('timezone: UTC\n') })));
    expect(e.key).toBe('timezone');
    expect(e.message).toMatch(/unknown setting.*valid settings: workflow, connections/);
  });

  it('an unknown nested key lists the valid ones at that level', () => {
    let e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('sensors:\n  wait_for_l2_full_load:\n    poke_interval: 60\n') })));
    expect(e.key).toBe('sensors.wait_for_l2_full_load.poke_interval');
    expect(e.message).toMatch(/valid settings under sensors\.wait_for_l2_full_load: flagTable, flagCode, pokeIntervalSeconds, timeoutSeconds/);
    // Inside a child the valid keys are those of its kind.
    e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('children:\n  x: { kind: sql, statement: "call a()", timeout: 5 }\n') })));
    expect(e.key).toBe('children.x.timeout');
    expect(e.message).toMatch(/valid settings under children\.x: kind, statement, timeoutSeconds, transactional/);
  });

  it('a file that is not a mapping', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file('- a\n- b\n') })));
    expect(e.key).toBe('(top level)');
    expect(e.message).toMatch(/must be a mapping of settings/);
  });

  it('invalid YAML gives the position and never quotes the file', () => {
    const f = file(`connections:\n  dwh: "postgres://u:${SECRET}@h/db\n`);
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: f })));
    expect(e.key).toBe('L2FLOW_CONFIG');
    expect(e.message).toMatch(/is not valid YAML \(line \d+, column \d+\)/);
  });

  it.each([
    ['trailing comma', `{"connections": {"dwh": "postgres://u:${SECRET}@h/db",}}`],
    ['unquoted value', `{"connections": {"dwh": postgres://u:${SECRET}@h/db}}`],
    ['truncated', `{"connections": {"dwh": "postgres://u:${SECRET}@h/db"`],
  ])('invalid JSON (%s) never quotes the file', (_what, text) => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: file(text, 'json') })));
    expect(e.key).toBe('L2FLOW_CONFIG');
    expect(e.message).toMatch(/is not valid JSON \((line \d+, column \d+|the file ends too early)\)/);
  });

  it('a missing file', () => {
    const missing = path.join(dir, 'nope.yaml');
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONFIG: missing })));
    expect(e.key).toBe('L2FLOW_CONFIG');
    expect(e.message).toContain(`cannot read ${missing} (no such file)`);
    expect(e.message).toMatch(/point L2FLOW_CONFIG at an existing YAML or JSON file/);
  });
});

describe('the state database (connection id state)', () => {
  const STATE = `postgres://l2flow_state:${SECRET}@state-db.example:5432/l2flow`;

  it('is the warehouse unless L2FLOW_CONN_STATE (or AIRFLOW_CONN_STATE, or connections.state) is set', () => {
    expect(stateIsWarehouse(loadConfig(fullEnv()))).toBe(true);
    for (const variable of ['L2FLOW_CONN_STATE', 'AIRFLOW_CONN_STATE']) {
      const c = loadConfig(fullEnv({ [variable]: STATE }));
      expect(c.connections.state).toBe(STATE);
      expect(stateIsWarehouse(c)).toBe(false);
    }
    const fromFile = loadConfig({ L2FLOW_CONN_DWH: DWH }, { scope: 'dwh', file: { connections: { state: STATE } } });
    expect(fromFile.connections.state).toBe(STATE);
    // STATE_CONN_ID names another id, looked up the same way.
    const renamed = loadConfig(fullEnv({ STATE_CONN_ID: 'l2flow_meta', L2FLOW_CONN_L2FLOW_META: STATE }));
    expect(renamed.connections.state).toBe(STATE);
  });

  it('a bad state URI names its variable and never quotes the password', () => {
    const e = configError(() => loadConfig(fullEnv({ L2FLOW_CONN_STATE: `mysql://u:${SECRET}@h/db` })));
    expect(e.key).toBe('L2FLOW_CONN_STATE');
    expect(e.message).toContain('connection "state"');
    expect(e.message).not.toContain(SECRET);
  });

  it('describeConfig masks it, or says it is the warehouse', () => {
    expect(describeConfig(loadConfig(fullEnv({ L2FLOW_CONN_STATE: STATE }))).connections)
      .toMatchObject({ state: 'postgres://l2flow_state:***@state-db.example:5432/l2flow' });
    expect(describeConfig(loadConfig(fullEnv())).connections).toMatchObject({ state: 'the warehouse (dwh)' });
  });
});

describe('redaction', () => {
  it('redactUri masks passwords and token-like parameters, keeps the rest', () => {
    expect(redactUri(DWH)).toBe('postgres://dwh_user:***@db.example:5432/dwh');
    const r = redactUri(`https://sap.example/flag?token=${SECRET}&api_key=${SECRET}&__extra__={"token":"${SECRET}"}&mode=x`);
    expect(r).not.toContain(SECRET);
    expect(r).toContain('mode=x');
    expect(redactUri('postgres://db.example/dwh')).toBe('postgres://db.example/dwh');
    expect(redactUri(`not a uri ${SECRET}`)).toBe('(unparseable URI)');
  });

  it('describeConfig masks every connection', () => {
    const c = loadConfig(fullEnv({ L2FLOW_CONN_SAP_CONN: `https://sap.example/flag?token=${SECRET}` }));
    const d = describeConfig(c);
    expect(JSON.stringify(d)).not.toContain(SECRET);
    expect(d.connections).toEqual({
      dwh: 'postgres://dwh_user:***@db.example:5432/dwh',
      state: 'the warehouse (dwh)',
      sap: 'https://sap.example/flag?token=***',
      smtp: 'smtp://mail_user:***@mail.example:587',
    });
    expect(d.timezone).toBe('Asia/Tashkent');
  });
});
