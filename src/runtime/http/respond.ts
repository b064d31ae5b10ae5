import type { Context } from 'hono';
import type { ContentfulStatusCode } from 'hono/utils/http-status';
import { z } from 'zod';
import { isIsoDate } from '../../lib/dates.js';
import { L2flowError, type L2flowErrorCode } from '../api.js';

/** Answers of the HTTP API: JSON scrubbed of every configured secret, errors with a code and the field at fault. */

/** A request the API refuses: its status, a stable code and, for bad input, the field that is wrong. */
export class HttpError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** 400 naming the field. */
export const badInput = (field: string, message: string) => new HttpError(400, 'BAD_REQUEST', `${field}: ${message}`, field);

const STATUS_OF: Record<L2flowErrorCode, ContentfulStatusCode> = {
  INVALID_DATE: 400,
  BEFORE_START_DATE: 400,
  INVALID_RANGE: 400,
  BAD_STEP: 400,
  NO_RUNS: 404,
  RUN_ACTIVE: 409,
  MANUAL_DISABLED: 409,
  NOT_MIGRATED: 503,
  FLAG_TRIGGER_MISSING: 503,
  NOT_AVAILABLE: 503,
  DATABASE_ERROR: 503,
};

/** Which request field an API error code is about, when it is about one. */
const FIELD_OF: Partial<Record<L2flowErrorCode, string>> = { BAD_STEP: 'fromStep', BEFORE_START_DATE: 'date', INVALID_RANGE: 'to' };

/** An error as the API's answer: known ones with their status; anything else a 500 without details. */
export function errorAnswer(err: unknown): { status: ContentfulStatusCode; body: { error: { code: string; message: string; field?: string } } } {
  if (err instanceof HttpError) return { status: err.status, body: { error: { code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) } } };
  if (err instanceof L2flowError) {
    const field = FIELD_OF[err.code];
    return { status: STATUS_OF[err.code], body: { error: { code: err.code, message: err.message, ...(field ? { field } : {}) } } };
  }
  return { status: 500, body: { error: { code: 'INTERNAL', message: 'internal error: see the l2flow log' } } };
}

/** JSON writer whose every string is scrubbed of the secrets (connection passwords, tokens) whatever key holds it. */
export function jsonWriter(scrub: (s: string) => string) {
  const replacer = (_key: string, v: unknown) => (typeof v === 'string' ? scrub(v) : v);
  return {
    stringify: (body: unknown) => JSON.stringify(body, replacer),
    send: (c: Context, body: unknown, status: ContentfulStatusCode = 200) =>
      c.body(JSON.stringify(body, replacer), status, { 'content-type': 'application/json; charset=utf-8' }),
  };
}

/** Answer `body` as JSON with `status` (default 200). */
export type Send = ReturnType<typeof jsonWriter>['send'];

/** The :date of a path, checked. */
export function dateParam(c: Context): string {
  const date = c.req.param('date') ?? '';
  if (!isIsoDate(date)) throw badInput('date', `"${date.slice(0, 40)}" is not a date: write YYYY-MM-DD, e.g. 2024-03-15`);
  return date;
}

export const isoDate = z.string({ error: 'must be a date YYYY-MM-DD' }).refine(isIsoDate, { error: 'must be a date YYYY-MM-DD, e.g. 2024-03-15' });
export const reason = z.string({ error: 'must be text' }).max(1000, { error: 'must be at most 1000 characters' });

/** The first problem zod found, as a 400 naming the field (an unknown key names itself). */
export function schemaError(error: z.ZodError): HttpError {
  const issue = error.issues[0]!;
  if (issue.code === 'unrecognized_keys') return badInput(issue.keys[0]!, 'is not a known field');
  return badInput(issue.path.join('.') || 'body', issue.message);
}

/** The request's JSON body (empty: {}), checked by `schema`; a write must say it sends JSON, so a web page cannot post to it. */
export async function jsonBody<T extends z.ZodType>(c: Context, schema: T): Promise<z.output<T>> {
  const type = c.req.header('content-type') ?? '';
  if (!/^application\/json\b/i.test(type)) {
    throw new HttpError(415, 'BAD_REQUEST', 'content-type: send the body as application/json (an empty body is {})', 'content-type');
  }
  const text = await c.req.text();
  let raw: unknown = {};
  try {
    if (text.trim()) raw = JSON.parse(text);
  } catch {
    throw badInput('body', 'is not valid JSON');
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) throw schemaError(parsed.error);
  return parsed.data;
}
