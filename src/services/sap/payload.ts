import { StepError } from '../../lib/errors.js';
import type { StepContext } from '../types.js';

/** SPEC field order; jsonb does not keep key order, so the body is always rebuilt in this order. */
const PAYLOAD_FIELDS = ['calc_ended', 'calc_date', 'calc_rows', 'logical_date', 'source_sys_cd', 'code_flg'] as const;

export type SapPayload = Record<(typeof PAYLOAD_FIELDS)[number], string>;

/** The readiness flag SAP expects for a logical date: `calcRows` rows counted on `calcDate` (the workflow's today). */
export function sapPayload(fields: { calcDate: string; calcRows: string; logicalDate: string }): SapPayload {
  return {
    calc_ended: 'X',
    calc_date: fields.calcDate,
    calc_rows: fields.calcRows,
    logical_date: fields.logicalDate,
    source_sys_cd: 'DWH',
    code_flg: 'l2_to_SAP_successful',
  };
}

/** The Idempotency-Key of one run attempt: stable across crash-resumes, new when an operator re-runs the step. */
export function sapIdempotencyKey(ctx: Pick<StepContext, 'workflowId' | 'logicalDate' | 'attempt'> & { loadId: number }): string {
  return `${ctx.workflowId}:${ctx.logicalDate}:${ctx.loadId}:${ctx.attempt}`;
}

/** The request body: the stored payload's fields in SPEC order. */
export function sapPayloadJson(payload: Record<string, unknown>): string {
  const ordered: Record<string, string> = {};
  for (const field of PAYLOAD_FIELDS) {
    const value = payload[field];
    if (typeof value !== 'string') {
      throw new StepError('INTERNAL', `the stored SAP payload has no string field "${field}": delete its l2flow.sap_send row to rebuild it`);
    }
    ordered[field] = value;
  }
  return JSON.stringify(ordered);
}
