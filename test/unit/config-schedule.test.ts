import { describe, expect, it } from 'vitest';
import { createL2flow } from '../../src/runtime/api.js';
import { loadConfig } from '../../src/runtime/config.js';
import { configError } from '../helpers/config-error.js';

// The schedule settings: defaults, windows resolved against the workflow's dates, cron checked by croner at load.

const ENV = { L2FLOW_CONN_DWH: 'postgres://u@127.0.0.1:5432/dwh' };
const load = (file: Record<string, unknown>, env: Record<string, string> = {}) => loadConfig({ ...ENV, ...env }, { scope: 'dwh', file });


describe('schedule settings', () => {
  it('default to manual runs only, as the original DAG (schedule_interval=None)', () => {
    const c = load({});
    expect(c.endDate).toBeNull();
    expect(c.schedule).toEqual({
      manual: true,
      cron: null,
      onFlag: { enabled: false, lookbackDays: 7, startDate: '2023-12-22', endDate: null },
    });
  });

  it('narrow the workflow dates with their own, never widen them', () => {
    const c = load({
      workflow: { startDate: '2024-01-01', endDate: '2024-12-31' },
      schedule: { cron: { expression: '@daily', startDate: '2023-06-01', endDate: '2024-06-30' }, onFlag: { enabled: true, startDate: '2024-03-01' } },
    });
    expect(c.schedule.cron).toEqual({ expression: '@daily', enabled: true, catchup: false, startDate: '2024-01-01', endDate: '2024-06-30' });
    expect(c.schedule.onFlag).toMatchObject({ startDate: '2024-03-01', endDate: '2024-12-31' });
  });

  it('come from the environment too', () => {
    const c = load({}, { L2FLOW_CRON: '0 3 * * *', L2FLOW_CRON_CATCHUP: 'true', L2FLOW_ON_FLAG: 'true', L2FLOW_END_DATE: '2030-01-01', L2FLOW_MANUAL: 'false' });
    expect(c.schedule.cron).toMatchObject({ expression: '0 3 * * *', enabled: true, catchup: true, endDate: '2030-01-01' });
    expect(c.schedule.onFlag.enabled).toBe(true);
    expect(c.schedule.manual).toBe(false);
  });

  it('refuse a cron expression croner refuses, naming the key and an example', () => {
    const file = configError(() => load({ schedule: { cron: { expression: '0 3 * *' } } }));
    expect(file.key).toBe('schedule.cron.expression');
    expect(file.message).toMatch(/"0 3 \* \*" is not a cron expression .*e\.g\. "0 3 \* \* \*" or "@daily"/);
    const env = configError(() => load({}, { L2FLOW_CRON: '61 * * * *' }));
    expect(env.key).toBe('L2FLOW_CRON');
    expect(env.message).toMatch(/minute/);
    expect(configError(() => load({ schedule: { cron: { enabled: true } } })).key).toBe('schedule.cron.expression');
  });

  it('refuse an end date before its start date, and a flag that is not true or false', () => {
    const own = configError(() => load({ workflow: { startDate: '2024-05-01' }, schedule: { cron: { expression: '@daily', endDate: '2024-04-01' } } }));
    expect(own.key).toBe('schedule.cron.endDate');
    expect(own.message).toMatch(/2024-04-01 is before the start date 2024-05-01/);
    expect(configError(() => load({ workflow: { startDate: '2024-05-01', endDate: '2024-01-01' } })).key).toBe('workflow.endDate');
    const flag = configError(() => load({}, { L2FLOW_CRON: '@daily', L2FLOW_CRON_ENABLED: 'maybe' }));
    expect(flag.key).toBe('L2FLOW_CRON_ENABLED');
    expect(flag.message).toMatch(/L2FLOW_CRON_ENABLED=false/);
    expect(configError(() => load({ schedule: { cron: { expression: '@daily', catchup: 'yes' } } })).message).toMatch(/must be true or false/);
  });

  it('manual: false refuses trigger() before it connects', async () => {
    const l2 = createL2flow({ env: ENV, scope: 'dwh', config: { schedule: { manual: false } } });
    await expect(l2.trigger('2024-05-01')).rejects.toMatchObject({ code: 'MANUAL_DISABLED', message: expect.stringMatching(/schedule\.manual/) });
    await l2.stop();
  });
});
