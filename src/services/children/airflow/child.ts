import type pg from 'pg';
import { StepError, toErrorInfo } from '../../../lib/errors.js';
import { backoffDelay, type RetryPolicy } from '../../../lib/retry.js';
import { abortableSleep, formatDuration, MAX_TIMER_MS } from '../../../lib/time.js';
import type { Logger, StepContext } from '../../types.js';
import { createAirflowApi, type AirflowApi } from './api.js';
import { readClaim, releaseClaim, stoppedForGood, writeClaim, type DagRunClaim } from './claim.js';
import type { AirflowApiVersion, AirflowEndpoint } from './connection.js';

/** A child workflow that is a DAG in Airflow: triggered through its REST API, then (by default) waited for. */
export interface AirflowChildConfig {
  kind: 'airflow';
  dagId: string;
  /** The connection id; its URI is resolved at start-up (L2FLOW_CONN_<ID>, AIRFLOW_CONN_<ID>, connections map). */
  connection: string;
  apiVersion?: AirflowApiVersion;
  conf: Record<string, unknown>;
  resetDagRun: boolean;
  waitForCompletion: boolean;
  pokeIntervalMs: number;
  maxPokeIntervalMs: number;
  timeoutMs?: number;
  requestTimeoutMs: number;
  maxTries: number;
}

/** How the DAG run ended (or stood, without waitForCompletion). */
export interface AirflowOutcome {
  dagId: string;
  dagRunId: string;
  state: string;
}

const FINISHED = new Set(['success', 'failed']);
/** How long an aborted step waits for the run's record to say whether it was cancelled or only let go. */
const STOP_VERDICT_GRACE_MS = 2_000;

/** The DAG run id of a child in a run attempt: the same across crash-resumes, new when an operator re-runs the run. */
export function dagRunIdOf(ctx: Pick<StepContext, 'workflowId' | 'logicalDate' | 'attempt'>, child: string): string {
  return `l2flow__${ctx.workflowId}__${child}__${ctx.logicalDate}__${ctx.attempt}`;
}

/** The airflow child `child`: trigger (or re-attach to, or clear) its DAG run, then poll it with backoff until it ends. */
export function createAirflowChild(deps: { pool: pg.Pool; logger: Logger; child: string; cfg: AirflowChildConfig; endpoint: AirflowEndpoint }) {
  const { pool, child, cfg, endpoint } = deps;
  // API calls retry on the poll's backoff: a flapping webserver is waited out for about as long as a slow DAG poll.
  const callPolicy: RetryPolicy = { maxTries: cfg.maxTries, baseDelayMs: cfg.pokeIntervalMs, maxDelayMs: cfg.maxPokeIntervalMs, jitter: 'equal' };
  const pollPolicy: RetryPolicy = { maxTries: Infinity, baseDelayMs: cfg.pokeIntervalMs, maxDelayMs: cfg.maxPokeIntervalMs, jitter: 'none' };
  const api: AirflowApi = createAirflowApi({ endpoint, child, requestTimeoutMs: cfg.requestTimeoutMs, retry: callPolicy });
  const { dagId } = cfg;

  const failed = (message: string, dagRunId: string, state: string, retryable = false) =>
    new StepError('CHILD_FAILED', `child workflow ${child}: ${message}`, { retryable, details: { dagId, dagRunId, state, airflow: endpoint.root } });

  /** Own the DAG run: re-attach to our claim, trigger it, or take over one we did not trigger (resetDagRun). */
  async function attach(ctx: StepContext, dagRunId: string, signal: AbortSignal, log: Logger): Promise<DagRunClaim> {
    const claimed = await readClaim(pool, ctx, child);
    const run = await api.getDagRun(dagId, dagRunId, signal);
    if (claimed) {
      // Ours from an earlier invocation of this very step: never cleared, never triggered twice.
      if (!run) await trigger(dagRunId, signal, log);
      else log.info({ state: run.state }, 'resumed: re-attaching to the DAG run this step triggered');
      return claimed;
    }
    if (run) {
      if (!cfg.resetDagRun) {
        throw failed(`DAG run ${dagRunId} of DAG ${dagId} already exists in Airflow (state ${run.state}) and this step did not trigger it: ` +
          'set resetDagRun: true to re-run it, or delete that DAG run in Airflow', dagRunId, run.state);
      }
      // A live run is already doing the work: clearing it would only kill tasks in flight. A finished one runs again.
      if (FINISHED.has(run.state)) {
        await api.clear(dagId, dagRunId, signal);
        log.info({ previousState: run.state }, 'cleared the existing DAG run (resetDagRun) so Airflow runs it again');
      } else log.info({ state: run.state }, 'taking over the DAG run in progress (resetDagRun)');
      return writeClaim(pool, ctx, child, dagRunId); // after the clear: a crash before it leaves the run unclaimed, to clear again
    }
    const claim = await writeClaim(pool, ctx, child, dagRunId); // before the POST: a 409 after a lost answer is ours
    await trigger(dagRunId, signal, log);
    return claim;
  }

  async function trigger(dagRunId: string, signal: AbortSignal, log: Logger): Promise<void> {
    // Airflow 3 requires logical_date (null: none); Airflow 2 sets it to now when absent. The l2flow logical date is
    // not sent: it would collide with the DAG's scheduled run of that date.
    const body = endpoint.apiVersion === 2 ? { dag_run_id: dagRunId, logical_date: null, conf: cfg.conf } : { dag_run_id: dagRunId, conf: cfg.conf };
    const outcome = await api.trigger(dagId, body, signal);
    log.info({ outcome }, outcome === 'created' ? 'triggered the DAG run' : 'the DAG run exists already (409): attaching to it');
  }

  async function waitForEnd(dagRunId: string, signal: AbortSignal, log: Logger): Promise<string> {
    for (let n = 1; ; n++) {
      const run = await api.getDagRun(dagId, dagRunId, signal);
      if (!run) throw failed(`DAG run ${dagRunId} of DAG ${dagId} disappeared from Airflow (404) while l2flow waited for it`, dagRunId, 'deleted');
      if (run.state === 'success') return run.state;
      if (run.state === 'failed') {
        throw failed(`Airflow DAG run ${dagRunId} of DAG ${dagId} failed: see its task logs in Airflow (${endpoint.root}); ` +
          'clear the step to run it again', dagRunId, run.state);
      }
      const delay = backoffDelay(pollPolicy, n);
      log.debug({ state: run.state, nextPollMs: delay }, 'DAG run not finished yet');
      await abortableSleep(delay, signal);
      if (signal.aborted) throw new StepError('ABORTED', `child workflow ${child} was stopped`);
    }
  }

  /** Fail the DAG run in Airflow (unless it already ended), best effort: the step ends anyway. */
  async function stopDagRun(dagRunId: string, log: Logger): Promise<void> {
    const own = AbortSignal.timeout(cfg.requestTimeoutMs);
    try {
      const run = await api.getDagRun(dagId, dagRunId, own);
      if (run && !FINISHED.has(run.state)) {
        await api.markFailed(dagId, dagRunId, own);
        log.warn({ previousState: run.state }, 'marked the DAG run failed in Airflow');
      }
    } catch (err) {
      log.error({ err: toErrorInfo(err) }, 'could not mark the DAG run failed in Airflow');
    }
  }

  return async function runAirflowChild(ctx: StepContext, signal: AbortSignal): Promise<AirflowOutcome> {
    const dagRunId = dagRunIdOf(ctx, child);
    const log = deps.logger.child({ child, runId: ctx.runId, dagId, dagRunId });
    const stop = new AbortController();
    const onAbort = () => stop.abort(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    let timedOut = false;
    let timer: NodeJS.Timeout | undefined;
    try {
      const claim = await attach(ctx, dagRunId, stop.signal, log);
      if (!cfg.waitForCompletion) return { dagId, dagRunId, state: (await api.getDagRun(dagId, dagRunId, stop.signal))?.state ?? 'queued' };
      if (cfg.timeoutMs !== undefined) {
        // Counted from the first claim, so a restart does not extend it.
        const left = Math.max(0, claim.claimedAt + cfg.timeoutMs - Date.now());
        timer = setTimeout(() => { timedOut = true; stop.abort(); }, Math.min(left, MAX_TIMER_MS));
      }
      return { dagId, dagRunId, state: await waitForEnd(dagRunId, stop.signal, log) };
    } catch (err) {
      if (!stop.signal.aborted) {
        // The DAG run ended without success (or vanished): a retry of the step may take it over and re-run it.
        if (err instanceof StepError && err.code === 'CHILD_FAILED' && err.details?.state) await releaseClaim(pool, ctx, child);
        throw err;
      }
      if (!timedOut && !(await stoppedForGood(pool, ctx, child, STOP_VERDICT_GRACE_MS).catch(() => false))) {
        log.info('this process let the run go: the DAG run is left running and the resumed step re-attaches to it');
        throw new StepError('ABORTED', `child workflow ${child} was released by this process; DAG run ${dagRunId} keeps running`, { cause: signal.reason });
      }
      await stopDagRun(dagRunId, log);
      await releaseClaim(pool, ctx, child);
      if (timedOut) {
        throw new StepError('CHILD_TIMEOUT', `child workflow ${child} timed out after ${formatDuration(cfg.timeoutMs!)}: ` +
          `DAG run ${dagRunId} of DAG ${dagId} was marked failed in Airflow`, { retryable: true, details: { dagId, dagRunId } });
      }
      throw new StepError('ABORTED', `child workflow ${child} was cancelled: DAG run ${dagRunId} of DAG ${dagId} was marked failed in Airflow`, { cause: signal.reason });
    } finally {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    }
  };
}
