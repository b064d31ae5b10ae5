import type pg from 'pg';
import { Counter, Gauge, type Registry } from 'prom-client';
import { toErrorInfo } from '../lib/errors.js';
import { createRateLimitedWarn } from '../lib/log.js';
import type { DedicatedConnections } from '../services/db/index.js';
import type { Logger } from './logger.js';
import type { RunStatus } from './run-store.js';

/**
 * Metrics read at scrape time: what the database says (the truth across replicas: every process reports the same
 * numbers for the workflow) and how busy this process's connections are. Two small queries per scrape, shared by
 * every gauge of the scrape; when they fail the gauges keep their last values and an error counter goes up.
 */

const RUN_STATUSES: readonly RunStatus[] = ['queued', 'running', 'success', 'failed', 'cancelled'];

interface DbReading {
  runs: Array<{ status: string; n: number }>;
  outbox: Array<{ kind: string; status: string; n: number; late_runs: number }>;
}

/** Register the scrape-time gauges on `registry`. */
export function registerDbMetrics(o: {
  registry: Registry;
  pool: pg.Pool;
  /** The warehouse's own pool when l2flow's tables live elsewhere (label pool="warehouse"); else undefined. */
  dwh?: pg.Pool;
  childConnections: Pick<DedicatedConnections, 'stats'>;
  workflowId: string;
  logger: Logger;
}): { stop(): void } {
  const dwh = o.dwh !== undefined && o.dwh !== o.pool ? o.dwh : undefined;
  const registers = [o.registry];
  const warn = createRateLimitedWarn(o.logger, 300_000);
  const errors = new Counter({
    name: 'l2flow_metrics_db_errors_total',
    help: 'Scrapes whose database reads failed (the database gauges then keep their last values)',
    registers,
  });
  let inflight: Promise<DbReading | null> | undefined;
  let stopped = false;

  /** One reading per scrape: every gauge's collect() of the same scrape shares the queries in flight. */
  const read = (): Promise<DbReading | null> =>
    (inflight ??= (async () => {
      if (stopped) return null; // the runtime's pool may be closed: serve the last values
      try {
        const runs = await o.pool.query<{ status: string; n: number }>(
          'select status, count(*)::int as n from l2flow.run where workflow_id = $1 group by status',
          [o.workflowId],
        );
        const outbox = await o.pool.query<{ kind: string; status: string; n: number; late_runs: number }>(
          `select e.kind, e.status, count(*)::int as n, count(*) filter (where e.step = '')::int as late_runs
             from l2flow.email_outbox e join l2flow.run r using (run_id)
            where r.workflow_id = $1 group by e.kind, e.status`,
          [o.workflowId],
        );
        return { runs: runs.rows, outbox: outbox.rows };
      } catch (err) {
        errors.inc();
        warn('metrics-db', { err: toErrorInfo(err) }, 'metrics: reading runs and the outbox failed; the gauges keep their last values');
        return null;
      }
    })().finally(() => {
      inflight = undefined;
    }));

  new Gauge({
    name: 'l2flow_runs',
    help: 'Runs of the workflow by status, as the database has them (every replica reports the same numbers)',
    labelNames: ['status'],
    registers,
    async collect() {
      const r = await read();
      if (!r) return;
      for (const status of RUN_STATUSES) this.set({ status }, r.runs.find((x) => x.status === status)?.n ?? 0);
    },
  });
  new Gauge({
    name: 'l2flow_runs_late',
    help: "Run attempts that missed the workflow's expectedBy time (a whole-run late notice was queued), all time",
    registers,
    async collect() {
      const r = await read();
      if (r) this.set(r.outbox.filter((x) => x.kind === 'late').reduce((sum, x) => sum + x.late_runs, 0));
    },
  });
  new Gauge({
    name: 'l2flow_mail_outbox',
    help: "Mails of the workflow's runs in the outbox by kind (failure, late, recovered, blocked) and status (pending, sent, dead)",
    labelNames: ['kind', 'status'],
    registers,
    async collect() {
      const r = await read();
      if (!r) return;
      this.reset();
      for (const x of r.outbox) this.set({ kind: x.kind, status: x.status }, x.n);
    },
  });

  // The shared pool's counts and the child connections' stats: this process only, no query.
  new Gauge({
    name: 'l2flow_db_pool_in_use',
    help: "Database connections checked out now: pool 'shared' (every run's short queries) or 'children' (child workflows' statements)",
    labelNames: ['pool'],
    registers,
    collect() {
      this.set({ pool: 'shared' }, o.pool.totalCount - o.pool.idleCount);
      this.set({ pool: 'children' }, o.childConnections.stats().inUse);
      if (dwh) this.set({ pool: 'warehouse' }, dwh.totalCount - dwh.idleCount);
    },
  });
  new Gauge({
    name: 'l2flow_db_pool_waiting',
    help: 'Callers waiting for a database connection of the pool now',
    labelNames: ['pool'],
    registers,
    collect() {
      this.set({ pool: 'shared' }, o.pool.waitingCount);
      this.set({ pool: 'children' }, o.childConnections.stats().waiting);
      if (dwh) this.set({ pool: 'warehouse' }, dwh.waitingCount);
    },
  });
  new Gauge({
    name: 'l2flow_db_pool_idle',
    help: "Open, idle connections of the shared pool",
    labelNames: ['pool'],
    registers,
    collect() {
      this.set({ pool: 'shared' }, o.pool.idleCount);
      if (dwh) this.set({ pool: 'warehouse' }, dwh.idleCount);
    },
  });
  return {
    stop() {
      stopped = true;
    },
  };
}
