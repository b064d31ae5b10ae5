/**
 * onFlag creation: with schedule.onFlag on, a flag INSERT for business date B creates the run of B + 1, which is
 * claimed and passes wait_for_l2_full_load at once. Timed from the INSERT to the run leaving the sensor,
 * interleaved with the floor; the moment the run row was committed (its l2flow_run NOTIFY) is reported too.
 */
import { performance } from 'node:perf_hooks';
import { filter } from 'rxjs';
import { RUN_CHANNEL } from '../src/services/sensors/sensors.js';
import { FLAG_SENSOR } from './observers.js';
import { startSap, addDaysIso, atMost, benchConfig, benchSettings, floorProbe, openDb, percentiles, report, sampleInterleaved, startApp, until, within, type Bench, type Probe } from './harness.js';
import { diff, installCounters, perRun, snapshot, type QueryCounts } from './counters.js';

const FIRST_BUSINESS = '2041-01-01';

export const onFlagBench: Bench = {
  name: 'onflag',
  title: 'onFlag creation (flag INSERT → run created and past the sensor)',
  async run(ctx) {
    const rounds = ctx.n(200, 10);
    installCounters();
    /** Statements of the runtime from the flag INSERT to the run leaving the sensor, per sample. */
    const paths: QueryCounts[] = [];
    const db = await openDb('onflag');
    const sap = await startSap();
    const probes: Probe[] = [];
    try {
      // The floor in a database of its own: the flag INSERT wakes only the runtime's listener.
      probes.push(await floorProbe('onflag', '2001-01-01'));
      const settings = benchSettings(addDaysIso(FIRST_BUSINESS, 1), { schedule: { onFlag: { enabled: true } } });
      const app = await startApp(benchConfig(db.uri, sap.url, settings));
      const created: number[] = [];
      // When the run row's commit reached the runtime: the row's insert is the date's first l2flow_run NOTIFY
      // (queued, or running when the leader created it taken), heard on the runtime's own LISTEN connection.
      const createdAt = new Map<string, number>();
      const heard = app.hub.notifications$.pipe(filter((n) => n.channel === RUN_CHANNEL)).subscribe((n) => {
        const t = performance.now();
        const d = (n.payload as { logical_date?: unknown } | null)?.logical_date;
        if (typeof d === 'string' && !createdAt.has(d)) createdAt.set(d, t);
      });
      try {
        await until(() => app.supervisor.isLeader(), 30_000, 'this process becoming the leader');
        let sentAt = 0;
        probes.push({
          name: 'onFlag run past the sensor',
          async arm(i) {
            const business = addDaysIso(FIRST_BUSINESS, i);
            const logical = addDaysIso(business, 1);
            let onLeft!: (t: number) => void;
            let onEnd!: (status: string) => void;
            const left = new Promise<number>((r) => (onLeft = r));
            const ended = new Promise<string>((r) => (onEnd = r));
            let entered = false;
            let leftSeen = false;
            let atFire = snapshot();
            const sub = app.supervisor.events$.pipe(filter((e) => e.logicalDate === logical)).subscribe((e) => {
              if (e.steps.includes(FLAG_SENSOR)) entered = true;
              else if (entered && !leftSeen) {
                leftSeen = true;
                onLeft(performance.now());
                if (i >= ctx.n(10, 1)) paths.push(diff(atFire, snapshot()));
              }
              if (e.type === 'finished' || e.type === 'released') {
                sub.unsubscribe();
                onEnd(e.status);
              }
            });
            return {
              fire: async () => {
                sentAt = performance.now();
                atFire = snapshot();
                await db.insertFlag(business);
              },
              seen: left,
              async done() {
                const status = await within(ended, 30_000, `onFlag run ${logical} finishing`);
                if (status !== 'success') throw new Error(`benchmark: onFlag run ${logical} ended ${status}`);
                const c = createdAt.get(logical);
                if (c !== undefined && i >= ctx.n(10, 1)) created.push(c - sentAt);
                // The run's tail (snapshot writes) must not overlap the next sample.
                await until(() => app.pool.waitingCount === 0 && app.pool.idleCount === app.pool.totalCount, 10_000, 'pool idle', 2);
              },
            };
          },
          close: async () => undefined,
        });
        const samples = await sampleInterleaved(probes, rounds, ctx.n(10, 1));
        const floor = percentiles(samples.get(probes[0]!.name)!);
        const past = percentiles(samples.get(probes[1]!.name)!);
        const row = percentiles(created);
        const c = perRun(paths);
        return {
          samples: rounds,
          figures: [
            report('floor p50', floor.p50, 'ms'),
            atMost('run past the sensor p50', past.p50, 'ms', 5, '≤ 5 ms', floor.p50),
            report('run past the sensor p99', past.p99, 'ms', floor.p99),
            report('run row committed p50', row.p50, 'ms', floor.p50),
            report('round trips, flag INSERT → past the sensor', c.roundTrips, 'count'),
          ],
          notes: [
            `run past the sensor p90 ${past.p90}, max ${past.max} ms; run row committed (its l2flow_run NOTIFY) p90 ${row.p90} ms`,
            `statements from the INSERT to the run past the sensor (${c.runs} samples, all of the runtime's connections): ` +
              Object.entries(c.byKind).map(([k, v]) => `${k} ${v}`).join(', '),
          ],
        };
      } finally {
        heard.unsubscribe();
        await app.stop();
      }
    } finally {
      for (const p of probes) await p.close().catch(() => undefined);
      await sap.close();
      await db.drop();
    }
  },
};
