/**
 * The peer: graphile-worker 0.17 (a devDependency used only here), in a database of its own (probeInOwnDb in
 * harness.ts). A sample sends `select graphile_worker.add_job('bench', …)` from the bench's inserter connection;
 * "seen" is the task's start.
 */
import { performance } from 'node:perf_hooks';
import { Logger, run, type Runner } from 'graphile-worker';
import { probeInOwnDb, type BenchDb, type Probe } from './harness.js';

export function graphileProbe(tag: string): Promise<Probe> {
  return probeInOwnDb(`${tag}_peer`, inDb);
}

async function inDb(db: BenchDb): Promise<Probe> {
  const started = new Map<number, (t: number) => void>();
  const runner: Runner = await run({
    connectionString: db.uri,
    concurrency: 1,
    noHandleSignals: true,
    pollInterval: 60_000, // as the l2flow sensor: only LISTEN/NOTIFY can be fast
    logger: new Logger(() => () => undefined),
    taskList: {
      bench: async (payload) => {
        const t = performance.now();
        const i = (payload as { i?: number }).i ?? -1;
        started.get(i)?.(t);
        started.delete(i);
      },
    },
  });
  return {
    name: 'graphile-worker add_job → task start',
    async arm(i) {
      const seen = new Promise<number>((r) => started.set(i, r));
      return {
        fire: async () => void (await db.inserter.query(`select graphile_worker.add_job('bench', json_build_object('i', $1::int))`, [i])),
        seen,
        // The job row is deleted after the task: wait for the worker to be idle again.
        done: async () => {
          for (let k = 0; k < 200; k++) {
            const { rows } = await db.pool.query<{ n: number }>('select count(*)::int as n from graphile_worker._private_jobs');
            if (rows[0]?.n === 0) return;
            await new Promise((r) => setTimeout(r, 2));
          }
        },
      };
    },
    close: () => runner.stop(),
  };
}
