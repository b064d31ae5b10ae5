import { describe, expect, it } from 'vitest';
import { register as globalRegistry } from 'prom-client';
import { addDays, formatInZone } from '../../src/lib/dates.js';
import { createMetrics } from '../../src/runtime/metrics.js';
import { useFixture, type Fixture } from '../helpers/app-fixture.js';
import { until } from '../helpers/process.js';
import { parseExposition, sampleSum, type Sample } from '../helpers/prometheus.js';
import type { App } from '../../src/runtime/app.js';

// /metrics as the HTTP server serves it: app.metrics.text(), parsed, after real runs against real PostgreSQL,
// SAP and SMTP servers.

let fx: Fixture;
useFixture((f) => (fx = f));

const scrape = async (app: App): Promise<Sample[]> => parseExposition(await app.metrics.text());
const sum = sampleSum;

/** Scrape until `ok` holds for the samples; returns them. */
function scrapeUntil(app: App, what: string, ok: (s: Sample[]) => boolean): Promise<Sample[]> {
  return until(what, async () => {
    const s = await scrape(app);
    return ok(s) ? s : null;
  });
}

describe('/metrics', () => {
  it('after one run succeeds and one fails (SAP 400): runs, steps, sensors, SAP, SMTP, pool slots, pools, process', async () => {
    const D1 = '2024-10-01';
    const D2 = addDays(D1, 1);
    const app = await fx.startApp(D1);
    const before = await scrape(app);
    const runs = (s: Sample[], status: string) => sum(s, 'l2flow_runs', { status }) ?? 0;

    await fx.trigger(D1, { flag: true });
    expect(await fx.finished(D1)).toMatchObject({ status: 'success' });
    fx.answer((res) => res.writeHead(400, { 'content-type': 'application/json' }).end('{"error":"refused"}'));
    await fx.trigger(D2, { flag: true });
    expect(await fx.finished(D2)).toMatchObject({ status: 'failed' });
    const s = await scrapeUntil(app, 'the failure mail to be counted', (x) => (sum(x, 'l2flow_mail_sends_total', { kind: 'failure', outcome: 'sent' }) ?? 0) >= 1);

    // Runs by status come from the database: one more success and one more failure than before.
    expect(runs(s, 'success') - runs(before, 'success')).toBe(1);
    expect(runs(s, 'failed') - runs(before, 'failed')).toBe(1);
    expect(sum(s, 'l2flow_runs', { status: 'queued' })).toBeDefined();
    expect(sum(s, 'l2flow_runs_finished_total', { status: 'success' })).toBe(1);
    expect(sum(s, 'l2flow_runs_finished_total', { status: 'failed' })).toBe(1);
    expect(sum(s, 'l2flow_run_claims_total', { kind: 'started' })).toBe(2);

    const steps = (step: string, status: string) => sum(s, 'l2flow_step_duration_seconds_count', { step, status });
    for (const step of ['wait_for_l2_full_load', 'get_load_id', 'workflow_registration', 'wait_for_success_end', 'run_wf_data_preparation_for_reports']) {
      expect(steps(step, 'success'), step).toBe(2);
    }
    expect(steps('send_flg_to_sap', 'success')).toBe(1);
    expect(steps('send_flg_to_sap', 'failed')).toBe(1);
    expect(steps('end', 'success')).toBe(1);
    expect(steps('email_on_failure', 'success')).toBe(1);
    // The +Inf bucket holds every observation.
    expect(sum(s, 'l2flow_step_duration_seconds_bucket', { step: 'get_load_id', status: 'success', le: '+Inf' })).toBe(2);
    for (const sensor of ['wait_for_l2_full_load', 'wait_for_success_end']) {
      expect(sum(s, 'l2flow_sensor_wait_seconds_count', { sensor, status: 'success' }), sensor).toBe(2);
      expect(sum(s, 'l2flow_sensor_waiting_runs', { sensor }), sensor).toBe(0);
      // The start date's run passes wait_for_success_end without a check: each sensor checked at least once.
      expect(sum(s, 'l2flow_sensor_checks_total', { sensor, reason: 'register', outcome: 'ok' }), sensor).toBeGreaterThanOrEqual(1);
    }

    expect(sum(s, 'l2flow_sap_requests_total', { outcome: 'ok', answer: '2xx' })).toBe(1);
    expect(sum(s, 'l2flow_sap_requests_total', { outcome: 'failed', answer: '4xx' })).toBe(1);
    expect(sum(s, 'l2flow_sap_request_seconds_count')).toBe(2);
    expect(sum(s, 'l2flow_mail_sends_total', { kind: 'failure', outcome: 'sent' })).toBe(1);
    expect(sum(s, 'l2flow_mail_outbox', { kind: 'failure', status: 'sent' })).toBeGreaterThanOrEqual(1);
    expect(sum(s, 'l2flow_runs_late')).toBe(0);
    expect(sum(s, 'l2flow_pool_slot_wait_seconds_count', { pool: 'dwh_l2' })).toBe(2);

    for (const pool of ['shared', 'children']) {
      expect(sum(s, 'l2flow_db_pool_in_use', { pool }), pool).toBeGreaterThanOrEqual(0);
      expect(sum(s, 'l2flow_db_pool_waiting', { pool }), pool).toBeGreaterThanOrEqual(0);
    }
    expect(sum(s, 'l2flow_runs_active')).toBe(0);
    expect(sum(s, 'l2flow_listener_connected')).toBe(1);
    expect(sum(s, 'l2flow_metrics_db_errors_total')).toBe(0);
    expect(sum(s, 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(sum(s, 'nodejs_heap_size_used_bytes')).toBeGreaterThan(0);
    expect(app.metrics.contentType).toMatch(/^text\/plain; version=0\.0\.4/);
  });

  it('a parked run: waiting gauge, late against expectedBy, a reconnect after the listener backend is killed, a hint check after the flag', async () => {
    // expectedBy two seconds ahead, on the date it falls on (a deadline already passed when the run was created counts not).
    const timezone = 'Etc/GMT+12';
    const [D, expectedBy] = formatInZone(Math.ceil((Date.now() + 2_000) / 1000) * 1000, timezone).split(' ') as [string, string];
    const app = await fx.startApp(D, { file: { workflow: { timezone, expectedBy } } });
    const lateBefore = sum(await scrape(app), 'l2flow_runs_late') ?? 0;
    await fx.trigger(D);
    const flagSensor = { sensor: 'wait_for_l2_full_load' };
    await scrapeUntil(app, 'the run to wait for its flag', (s) => sum(s, 'l2flow_sensor_waiting_runs', flagSensor) === 1);
    const late = await scrapeUntil(app, 'the late mail to be sent', (s) => sum(s, 'l2flow_mail_sends_total', { kind: 'late', outcome: 'sent' }) === 1);
    expect(sum(late, 'l2flow_runs_late')).toBe(lateBefore + 1);
    expect(sum(late, 'l2flow_mail_outbox', { kind: 'late', status: 'sent' })).toBeGreaterThanOrEqual(1);
    expect(sum(await scrape(app), 'l2flow_listener_reconnects_total')).toBe(0);

    await fx.db.pool.query(`select pg_terminate_backend(pid) from pg_stat_activity
      where application_name = 'l2flow-listener' and datname = current_database() and pid <> pg_backend_pid()`);
    const back = await scrapeUntil(app, 'the reconnect to be counted', (s) => sum(s, 'l2flow_listener_reconnects_total') === 1);
    // Every parked condition is checked again once the listener is back.
    await scrapeUntil(app, 'the recheck after the reconnect', (s) => (sum(s, 'l2flow_sensor_checks_total', { ...flagSensor, reason: 'reconnect' }) ?? 0) >= 1);
    expect(sum(back, 'l2flow_sensor_checks_total', { ...flagSensor, reason: 'hint' }) ?? 0).toBe(0);

    await fx.insertFlag(addDays(D, -1));
    expect(await fx.finished(D)).toMatchObject({ status: 'success' });
    const s = await scrape(app);
    expect(sum(s, 'l2flow_sensor_checks_total', { ...flagSensor, reason: 'hint', outcome: 'ok' })).toBeGreaterThanOrEqual(1);
    expect(sum(s, 'l2flow_sensor_reaction_seconds_count', { ...flagSensor, reason: 'hint' })).toBeGreaterThanOrEqual(1);
    expect(sum(s, 'l2flow_sensor_check_seconds_count', { ...flagSensor, reason: 'hint' })).toBeGreaterThanOrEqual(1);
    expect(sum(s, 'l2flow_sensor_waiting_runs', flagSensor)).toBe(0);
    expect(sum(s, 'l2flow_listener_reconnects_total')).toBe(1);
  });

  it('two runtimes in one process keep separate registries; a stopped one still answers without querying', async () => {
    const deps = { workflowId: 'WF_METRICS_TEST', pool: fx.db.pool, childConnections: { stats: () => ({ inUse: 0, waiting: 0 }) }, logger: silent() };
    const a = createMetrics(deps);
    const b = createMetrics(deps);
    expect(a.registry).not.toBe(b.registry);
    expect(a.registry).not.toBe(globalRegistry);
    a.sapTry({ outcome: 'failed', answer: 'timeout', durationMs: 1000 });
    const sa = parseExposition(await a.text());
    const sb = parseExposition(await b.text());
    expect(sum(sa, 'l2flow_sap_requests_total', { outcome: 'failed', answer: 'timeout' })).toBe(1);
    expect(sum(sb, 'l2flow_sap_requests_total')).toBeUndefined();
    // Process metrics appear in both, once each.
    for (const x of [sa, sb]) expect(x.filter((v) => v.name === 'process_start_time_seconds')).toHaveLength(1);
    a.stop();
    b.stop();
    expect(sum(parseExposition(await a.text()), 'l2flow_metrics_db_errors_total')).toBe(0);
  });
});

function silent() {
  const noop = () => undefined;
  const logger = { warn: noop, info: noop, debug: noop, error: noop, child: () => logger };
  return logger as never;
}
