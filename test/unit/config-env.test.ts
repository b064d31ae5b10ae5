import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULTS, ENV_KEYS, loadConfig } from '../../src/runtime/config.js';
import { configError } from '../helpers/config-error.js';

const DWH = 'postgres://u:pw-secret@db.example/dwh';
const dir = mkdtempSync(path.join(os.tmpdir(), 'l2flow-config-env-test-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const configFile = path.join(dir, 'l2flow.yaml');
writeFileSync(
  configFile,
  `workflow: { timezone: Europe/Berlin, maxActiveRuns: 3, poolSize: 4, claimIntervalSeconds: 5 }
sensors:
  wait_for_l2_full_load: { pokeIntervalSeconds: 30 }
email: { from: file@bank.example }
logLevel: warn
`,
);

function load(env: Record<string, string>) {
  return loadConfig({ L2FLOW_CONN_DWH: DWH, L2FLOW_CONFIG: configFile, ...env }, { scope: 'dwh' });
}


describe('the environment → settings key table', () => {
  it('holds every variable the README documents, each naming a key', () => {
    expect(Object.keys(ENV_KEYS)).toEqual(
      expect.arrayContaining(['L2FLOW_TIMEZONE', 'L2FLOW_MAX_ACTIVE_RUNS', 'L2FLOW_POOL_SIZE', 'L2FLOW_FLAG_POKE_INTERVAL_SECONDS', 'EMAIL_RECIPIENTS', 'EMAIL_FROM']),
    );
    expect(ENV_KEYS.L2FLOW_FLAG_POKE_INTERVAL_SECONDS!.key).toBe('sensors.wait_for_l2_full_load.pokeIntervalSeconds');
  });

  it('the file overrides the defaults, and each variable overrides the file', () => {
    const fromFile = load({});
    expect(fromFile).toMatchObject({ timezone: 'Europe/Berlin', maxActiveRuns: 3, poolSize: 4, claimIntervalMs: 5000, logLevel: 'warn' });
    expect(fromFile.flagSensor.pokeIntervalMs).toBe(30_000);
    expect(fromFile.email.from).toBe('file@bank.example');

    const fromEnv = load({
      L2FLOW_TIMEZONE: 'UTC',
      L2FLOW_MAX_ACTIVE_RUNS: '7',
      L2FLOW_POOL_SIZE: '12',
      L2FLOW_CLAIM_INTERVAL_SECONDS: '1',
      L2FLOW_FLAG_POKE_INTERVAL_SECONDS: '15',
      L2FLOW_RUN_TIMEOUT_SECONDS: '3600',
      EMAIL_FROM: 'env@bank.example',
      EMAIL_RECIPIENTS: ' a@bank.example, ,b@bank.example ',
      L2FLOW_LOG_LEVEL: 'debug',
    });
    expect(fromEnv).toMatchObject({ timezone: 'UTC', maxActiveRuns: 7, poolSize: 12, claimIntervalMs: 1000, runTimeoutMs: 3_600_000, logLevel: 'debug' });
    expect(fromEnv.flagSensor.pokeIntervalMs).toBe(15_000);
    expect(fromEnv.email).toEqual({ recipients: ['a@bank.example', 'b@bank.example'], from: 'env@bank.example' });
  });

  it('poolSize defaults to 10', () => {
    expect(DEFAULTS.poolSize).toBe(10);
    expect(loadConfig({ L2FLOW_CONN_DWH: DWH }, { scope: 'dwh' }).poolSize).toBe(10);
  });

  it.each([
    ['L2FLOW_POOL_SIZE', '0', /"0" must be greater than 0: write e\.g\. L2FLOW_POOL_SIZE=10/],
    ['L2FLOW_POOL_SIZE', '1.5', /"1\.5" is not a whole number: write e\.g\. L2FLOW_POOL_SIZE=10/],
    ['L2FLOW_CLAIM_INTERVAL_SECONDS', '7200', /at most 3600: write e\.g\. L2FLOW_CLAIM_INTERVAL_SECONDS=2/],
    ['L2FLOW_RUN_TIMEOUT_SECONDS', 'a day', /"a day" is not a number: write e\.g\. L2FLOW_RUN_TIMEOUT_SECONDS=86400/],
    ['EMAIL_RECIPIENTS', 'ops@bank.example;dev@bank.example', /is not an e-mail address/],
  ])('a bad %s=%s names the variable, not the file key it overrides', (variable, value, problem) => {
    const e = configError(() => load({ [variable]: value }));
    expect(e.key).toBe(variable);
    expect(e.source).toBeUndefined();
    expect(e.message).toMatch(problem);
  });

  it('a bad value in the file names the file key and the file', () => {
    writeFileSync(path.join(dir, 'bad.yaml'), 'workflow: { poolSize: 0 }\n');
    const e = configError(() => loadConfig({ L2FLOW_CONN_DWH: DWH, L2FLOW_CONFIG: path.join(dir, 'bad.yaml') }, { scope: 'dwh' }));
    expect(e.key).toBe('workflow.poolSize');
    expect(e.source).toBe('bad.yaml');
    // The environment fixes what the file got wrong.
    expect(loadConfig({ L2FLOW_CONN_DWH: DWH, L2FLOW_CONFIG: path.join(dir, 'bad.yaml'), L2FLOW_POOL_SIZE: '3' }, { scope: 'dwh' }).poolSize).toBe(3);
  });
});
