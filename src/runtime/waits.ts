import type pg from 'pg';
import { formatInZone } from '../lib/dates.js';
import { describePreviousRun, lastChecks, previousRunKey, previousRunStates, type SensorCheckRecord } from '../services/sensors/index.js';
import { addDays } from '../lib/dates.js';
import type { Config } from './config.js';

/**
 * What a run waiting in a sensor waits on, readably: for status (text and JSON), the late and blocked mails, and
 * anyone who rewrites status. Reads only; one query per sensor for any number of runs.
 */

/** A run as far as its wait matters. */
export interface WaitingRun {
  run_id: string;
  workflow_id: string;
  logical_date: string;
  business_date: string;
  status: string;
  current_step: string | null;
}

interface CheckTimes {
  /** When the condition was last checked (by any process), ISO; null: not recorded yet. */
  lastCheckAt: string | null;
  /** False when that check query failed. */
  lastCheckOk: boolean | null;
  /** When the fallback poll checks next at the latest (a NOTIFY is seen sooner), ISO. */
  nextPollAt: string | null;
}

/** wait_for_l2_full_load: the flag row it waits for. */
export interface FlagWait extends CheckTimes {
  step: 'wait_for_l2_full_load';
  flagTable: string;
  flagCode: string;
  businessDate: string;
  /** One line for people: "waiting for flag … ; last check …; next poll …". */
  text: string;
}

/** wait_for_success_end: the previous date's run and its state. */
export interface PreviousRunWait extends CheckTimes {
  step: 'wait_for_success_end';
  previousLogicalDate: string;
  /** null: the previous date has no run. */
  previousStatus: string | null;
  failedStep: string | null;
  failedAt: string | null;
  error: { code: string; message: string } | null;
  text: string;
}

export type WaitDescription = FlagWait | PreviousRunWait;

function times(rec: SensorCheckRecord | undefined, pokeIntervalMs: number): CheckTimes {
  return {
    lastCheckAt: rec ? rec.checkedAt.toISOString() : null,
    lastCheckOk: rec ? rec.ok : null,
    nextPollAt: rec?.polledAt ? new Date(rec.polledAt.getTime() + pokeIntervalMs).toISOString() : null,
  };
}

function timesText(t: CheckTimes, timeZone: string): string {
  const at = (iso: string) => formatInZone(Date.parse(iso), timeZone);
  if (!t.lastCheckAt) return 'not checked yet';
  const failed = t.lastCheckOk === false ? ' (the check query failed)' : '';
  const next = t.nextPollAt ? `; next poll by ${at(t.nextPollAt)}` : '';
  return `last check ${at(t.lastCheckAt)}${failed}${next} (${timeZone})`;
}

/** What each of `runs` that is waiting in a sensor waits on, by run id; runs in other steps are left out. */
export async function describeWaits(pool: pg.Pool, config: Config, runs: WaitingRun[]): Promise<Map<string, WaitDescription>> {
  const out = new Map<string, WaitDescription>();
  const tz = config.timezone;
  const inStep = (step: string) => runs.filter((r) => r.status === 'running' && r.current_step === step);

  const flagRuns = inStep('wait_for_l2_full_load');
  if (flagRuns.length > 0) {
    const { flagTable, flagCode, pokeIntervalMs } = config.flagSensor;
    const checks = await lastChecks(pool, 'wait_for_l2_full_load', flagRuns.map((r) => r.business_date));
    for (const r of flagRuns) {
      const t = times(checks.get(r.business_date), pokeIntervalMs);
      const condition = `flag '${flagCode}' in ${flagTable} for business date ${r.business_date}`;
      out.set(r.run_id, { step: 'wait_for_l2_full_load', flagTable, flagCode, businessDate: r.business_date, ...t, text: `waiting for ${condition}; ${timesText(t, tz)}` });
    }
  }

  const prevRuns = inStep('wait_for_success_end');
  const delta = config.successEndSensor.executionDeltaDays;
  for (const workflowId of new Set(prevRuns.map((r) => r.workflow_id))) {
    const mine = prevRuns.filter((r) => r.workflow_id === workflowId);
    const dates = mine.map((r) => addDays(r.logical_date, -delta));
    const [states, checks] = await Promise.all([
      previousRunStates(pool, workflowId, dates),
      lastChecks(pool, 'wait_for_success_end', dates.map((d) => previousRunKey(workflowId, d))),
    ]);
    mine.forEach((r, i) => {
      const s = states.find((x) => x.logicalDate === dates[i])!;
      const t = times(checks.get(previousRunKey(workflowId, s.logicalDate)), config.successEndSensor.pokeIntervalMs);
      out.set(r.run_id, {
        step: 'wait_for_success_end', previousLogicalDate: s.logicalDate, previousStatus: s.status, failedStep: s.failedStep,
        failedAt: s.failedStep || s.error ? (s.finishedAt?.toISOString() ?? null) : null, error: s.error, ...t,
        text: `waiting for ${describePreviousRun(s, tz)}; ${timesText(t, tz)}`,
      });
    });
  }
  return out;
}

/** What one run waits on, or null when it is not waiting in a sensor. */
export async function describeWait(pool: pg.Pool, config: Config, run: WaitingRun): Promise<WaitDescription | null> {
  return (await describeWaits(pool, config, [run])).get(run.run_id) ?? null;
}
