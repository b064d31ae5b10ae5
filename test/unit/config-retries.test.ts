import { describe, expect, it } from 'vitest';
import { ConfigError, DEFAULTS, loadConfig } from '../../src/runtime/config.js';

// The retry settings: workflow-wide defaults (0 retries, as the original DAG), overridden per step by its task id.

const env = { L2FLOW_CONN_DWH: 'postgres://u@127.0.0.1:5432/db' };
const load = (file: unknown) => loadConfig(env, { scope: 'dwh', file });

describe('retry settings', () => {
  it('retries nothing by default', () => {
    expect(DEFAULTS.retry).toEqual({});
  });

  it('applies workflow.retries to every step, and steps.<step_id> over it key by key, in ms', () => {
    const c = load({
      workflow: { retries: 1, retryDelaySeconds: 10, maxRetryDelaySeconds: 40 },
      steps: { send_flg_to_sap: { retries: 3 }, end: { retries: 0 } },
    });
    expect(c.retry.get_load_id).toEqual({ retries: 1, delayMs: 10_000, maxDelayMs: 40_000 });
    expect(c.retry.send_flg_to_sap).toEqual({ retries: 3, delayMs: 10_000, maxDelayMs: 40_000 });
    expect(c.retry.end).toBeUndefined();
    expect(c.retry).not.toHaveProperty('email_on_failure');
  });

  it('names the valid steps when a step id is wrong, and refuses negative retries', () => {
    const bad = (file: unknown) => {
      try {
        load(file);
      } catch (err) {
        if (err instanceof ConfigError) return err;
      }
      throw new Error('no ConfigError');
    };
    expect(bad({ steps: { send_to_sap: { retries: 1 } } }).message).toMatch(/unknown setting.*valid settings under steps: wait_for_l2_full_load, .*send_flg_to_sap, end/);
    expect(bad({ steps: { end: { retries: -1 } } }).message).toMatch(/must be 0 or more/);
  });
});
