import type pg from 'pg';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { skip, type Observable, type Subscription } from 'rxjs';
import type { SapTry } from '../services/sap/index.js';
import type { DedicatedConnections } from '../services/db/index.js';
import type { SensorCheck } from '../services/sensors/index.js';
import type { Logger } from './logger.js';
import { registerDbMetrics } from './metrics-db.js';
import type { RunEvent } from './live-run.js';
import { SENSOR_STEPS } from './status-view.js';

/**
 * Prometheus metrics of one runtime, in its own registry (several runtimes may live in one process: tests,
 * embedders). Services know nothing of prom-client: they report through optional callbacks (SAP tries, SMTP sends,
 * pool-slot waits) and the runtime's streams (run events, sensor checks, listener connects, lock reconnects) are
 * observed here. Process metrics (process_*, nodejs_*) belong to the process: one registry per process, appended
 * to every runtime's exposition.
 */

/** What the HTTP server serves at `/metrics`. */
export interface MetricsProvider {
  contentType: string;
  /** The exposition in Prometheus text format; reads the database (two small queries) once per call. */
  text(): Promise<string>;
}

/** The streams and state of a built runtime the metrics follow (see Metrics.watch). */
export interface MetricSources {
  runEvents$: Observable<RunEvent>;
  sensorChecks$: Observable<SensorCheck>;
  /** The listener's connects: the first one is the start, every later one a reconnect. */
  listenerConnected$: Observable<void>;
  listenerUp(): boolean;
  lockRelocked$: Observable<unknown>;
  lockLost$: Observable<unknown>;
  activeRuns(): number;
  isLeader(): boolean;
}

export interface Metrics extends MetricsProvider {
  registry: Registry;
  /** Callback for the SAP sender's `onTry`. */
  sapTry(t: SapTry): void;
  /** Callback for the mail dispatcher's `onSend`. */
  mailSend(e: { kind: string; outcome: 'sent' | 'failed' | 'dead' }): void;
  /** Callback for the pool slots' `onAcquired`. */
  slotAcquired(poolName: string, waitedMs: number): void;
  /** Follow the runtime's streams (once its supervisor exists); stop() unsubscribes. */
  watch(s: MetricSources): void;
  /** Unsubscribe from every stream and stop querying; later scrapes serve the last values. Nothing here holds a timer. */
  stop(): void;
}

/** Step durations: 10 ms … 4 h. */
const STEP_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400];
/** Sensor waits run up to the sensor timeout (Airflow's default: 7 days). */
const WAIT_BUCKETS = [...STEP_BUCKETS, 28800, 86400, 259200, 604800];
/** One check query, or a hint's way to its answer: 0.5 ms … 10 s. */
const CHECK_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** One POST to SAP: its timeout is seconds. */
const HTTP_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

let processRegistry: Registry | undefined;

/** process_* and nodejs_* metrics, collected once per process however many runtimes it holds. */
export function processMetrics(): Registry {
  if (!processRegistry) {
    processRegistry = new Registry();
    collectDefaultMetrics({ register: processRegistry });
  }
  return processRegistry;
}

/** A provider of the process metrics only: for an API instance that runs nothing (yet). */
export function processMetricsProvider(): MetricsProvider {
  return { contentType: Registry.PROMETHEUS_CONTENT_TYPE, text: () => processMetrics().metrics() };
}

/** Build the metrics of one runtime; the database gauges read `pool` at scrape time. */
export function createMetrics(deps: {
  workflowId: string;
  pool: pg.Pool;
  /** The warehouse's pool, when it is not `pool` (a separate state database). */
  dwh?: pg.Pool;
  childConnections: Pick<DedicatedConnections, 'stats'>;
  logger: Logger;
}): Metrics {
  const registry = new Registry();
  const registers = [registry];
  const subs: Subscription[] = [];
  let sources: MetricSources | undefined;
  /** A gauge whose value is read from the runtime at each scrape (0 before the sources are attached). */
  const liveGauge = (name: string, help: string, read: (src: MetricSources) => number) =>
    new Gauge({
      name, help, registers,
      collect() {
        this.set(sources ? read(sources) : 0);
      },
    });

  const stepDuration = new Histogram({
    name: 'l2flow_step_duration_seconds',
    help: 'Duration of each step try that ended in this process, by step and outcome (a resumed try counts from its first start)',
    labelNames: ['step', 'status'], buckets: STEP_BUCKETS, registers,
  });
  const sensorWait = new Histogram({
    name: 'l2flow_sensor_wait_seconds',
    help: 'Time a run waited in a sensor step, by sensor and outcome (success: the condition held)',
    labelNames: ['sensor', 'status'], buckets: WAIT_BUCKETS, registers,
  });
  const runSteps = new Map<string, string[]>();
  new Gauge({
    name: 'l2flow_sensor_waiting_runs',
    help: 'Runs executed by this process that wait in a sensor step now',
    labelNames: ['sensor'], registers,
    collect() {
      for (const sensor of SENSOR_STEPS) this.set({ sensor }, [...runSteps.values()].filter((s) => s.includes(sensor)).length);
    },
  });
  const checks = new Counter({
    name: 'l2flow_sensor_checks_total',
    help: 'Batched sensor check queries by sensor, reason (register, hint, reconnect, poll, deadline) and outcome (ok, failed)',
    labelNames: ['sensor', 'reason', 'outcome'], registers,
  });
  const checkSeconds = new Histogram({
    name: 'l2flow_sensor_check_seconds',
    help: 'Duration of one batched sensor check query, by sensor and reason',
    labelNames: ['sensor', 'reason'], buckets: CHECK_BUCKETS, registers,
  });
  const reactionSeconds = new Histogram({
    name: 'l2flow_sensor_reaction_seconds',
    help: 'From the request of a check to its answer; reason=hint: a NOTIFY reached this process -> the check it caused answered',
    labelNames: ['sensor', 'reason'], buckets: CHECK_BUCKETS, registers,
  });
  const reconnects = new Counter({
    name: 'l2flow_listener_reconnects_total',
    help: 'Times the LISTEN connection was re-established after it was lost (every parked condition is checked again)',
    registers,
  });
  liveGauge('l2flow_listener_connected', '1 while the LISTEN connection is up and listening on every channel', (src) => (src.listenerUp() ? 1 : 0));
  const claims = new Counter({
    name: 'l2flow_run_claims_total',
    help: 'Runs this process took to execute: kind=started (a new attempt) or restored (resumed from its snapshot: a take-over or a restart)',
    labelNames: ['kind'], registers,
  });
  const released = new Counter({
    name: 'l2flow_runs_released_total',
    help: 'Runs this process stopped executing without finishing them (shutdown, lost lock, taken over); another process resumes them',
    registers,
  });
  const finished = new Counter({
    name: 'l2flow_runs_finished_total',
    help: 'Runs that ended in this process, by status',
    labelNames: ['status'], registers,
  });
  const lockEvents = new Counter({
    name: 'l2flow_lock_connection_events_total',
    help: 'Breaks of the lock connection: outcome=relocked (back in time, locks taken again) or lost (every run released)',
    labelNames: ['outcome'], registers,
  });
  liveGauge('l2flow_runs_active', 'Runs this process executes now', (src) => src.activeRuns());
  liveGauge('l2flow_leader', "1 while this process holds the workflow's leader lock (it creates the scheduled runs)", (src) => (src.isLeader() ? 1 : 0));
  const sapRequests = new Counter({
    name: 'l2flow_sap_requests_total',
    help: 'POSTs of the readiness flag to SAP, by outcome (ok: a 2xx; failed) and answer (2xx, 4xx, 5xx, timeout, unreachable)',
    labelNames: ['outcome', 'answer'], registers,
  });
  const sapSeconds = new Histogram({
    name: 'l2flow_sap_request_seconds',
    help: 'Duration of one POST to SAP, answer included',
    labelNames: ['outcome'], buckets: HTTP_BUCKETS, registers,
  });
  const mailSends = new Counter({
    name: 'l2flow_mail_sends_total',
    help: 'SMTP deliveries tried from the outbox, by mail kind and outcome (sent, failed: retried later, dead: given up)',
    labelNames: ['kind', 'outcome'], registers,
  });
  const slotWait = new Histogram({
    name: 'l2flow_pool_slot_wait_seconds',
    help: 'Time a step waited for a slot of an Airflow-style pool (e.g. dwh_l2) before it could run',
    labelNames: ['pool'], buckets: [0.001, ...STEP_BUCKETS], registers,
  });
  const db = registerDbMetrics({ registry, pool: deps.pool, dwh: deps.dwh, childConnections: deps.childConnections, workflowId: deps.workflowId, logger: deps.logger });

  function onRunEvent(e: RunEvent): void {
    if (e.type === 'started' || e.type === 'restored') claims.inc({ kind: e.type });
    if (e.type === 'released') released.inc();
    if (e.type === 'finished') finished.inc({ status: e.status });
    if (e.type === 'finished' || e.type === 'released') runSteps.delete(e.runId);
    else runSteps.set(e.runId, e.steps);
    for (const end of e.ended ?? []) {
      const seconds = Math.max(0, end.endedAt - end.startedAt) / 1000;
      stepDuration.observe({ step: end.step, status: end.status }, seconds);
      if (SENSOR_STEPS.has(end.step)) sensorWait.observe({ sensor: end.step, status: end.status }, seconds);
    }
  }

  function onCheck(c: SensorCheck): void {
    const labels = { sensor: c.sensor, reason: c.reason };
    checks.inc({ ...labels, outcome: c.ok ? 'ok' : 'failed' });
    checkSeconds.observe(labels, (c.finishedAt - c.startedAt) / 1000);
    reactionSeconds.observe(labels, (c.finishedAt - c.requestedAt) / 1000);
  }

  return {
    registry,
    contentType: registry.contentType,
    async text() {
      const [own, proc] = await Promise.all([registry.metrics(), processMetrics().metrics()]);
      return `${own}\n${proc}`;
    },
    sapTry(t) {
      sapRequests.inc({ outcome: t.outcome, answer: t.answer });
      sapSeconds.observe({ outcome: t.outcome }, t.durationMs / 1000);
    },
    mailSend: (e) => mailSends.inc({ kind: e.kind, outcome: e.outcome }),
    slotAcquired: (poolName, waitedMs) => slotWait.observe({ pool: poolName }, waitedMs / 1000),
    watch(s) {
      sources = s;
      subs.push(
        s.runEvents$.subscribe(onRunEvent),
        s.sensorChecks$.subscribe(onCheck),
        s.listenerConnected$.pipe(skip(1)).subscribe(() => reconnects.inc()),
        s.lockRelocked$.subscribe(() => lockEvents.inc({ outcome: 'relocked' })),
        s.lockLost$.subscribe(() => lockEvents.inc({ outcome: 'lost' })),
      );
    },
    stop() {
      db.stop();
      for (const sub of subs.splice(0)) sub.unsubscribe();
      runSteps.clear();
    },
  };
}
