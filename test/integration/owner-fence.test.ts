import pino from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notOwnerError } from '../../src/lib/errors.js';
import { createChildRunner, type ChildConfig } from '../../src/services/children/index.js';
import { createDedicatedConnections, type Databases, type DedicatedConnections } from '../../src/services/db/index.js';
import { createMetadata } from '../../src/services/metadata.js';
import { createSapSender, parseSapConnection } from '../../src/services/sap/index.js';
import type { StepContext } from '../../src/services/types.js';
import { createRun, takeRun } from '../../src/runtime/run-store.js';
import { DEFAULTS } from '../../src/runtime/config.js';
import { createSegmentationView, createSplitTestDbs, createTestDb, type SplitDbs, type TestDb } from '../helpers/db.js';
import { startSapServer, type TestSapServer } from '../helpers/sap-server.js';

// The fence of a run's side effects (sql/008_owner_fence.sql): every write that records a step asserts, in its own
// statement, that the process making it still owns the run. A process whose run was taken over (another process's
// name is in the run row) gets NOT_OWNER and leaves no trace: no load id, no md row, no child's work, no memo, no
// SAP record or POST. The same calls as the owner succeed (the fence is what refuses, not the setup).

const WF = 'WF_MAIN_DATASETS_LOAD_L2_TO_L2';
const logger = pino({ level: 'silent' });
const signal = new AbortController().signal;
const ME = 'this-host:1:aaaaaa';
const OTHER = 'other-host:2:bbbbbb';

const children: Record<string, ChildConfig> = {
  wf_data_preparation_for_reports: { kind: 'sql', statement: 'insert into public.child_calls values ($1, $2)', transactional: true },
  l1_to_l2_p_load_data_ds_client_segmentation_full: { kind: 'sql', statement: 'insert into public.child_calls values ($1, $2)', transactional: false },
  sys_kill_all_session_pg: { kind: 'builtin', name: 'sys_kill_all_session_pg', idleSeconds: 3600 },
};

function services(db: Databases, connections: DedicatedConnections, sapBase: string) {
  return {
    md: createMetadata({ pool: db.state, dwh: db.dwh, logger }),
    children: createChildRunner({ pool: db.state, dwh: db.dwh, connections, children, logger }),
    sap: createSapSender({
      pool: db.state, dwh: db.dwh, endpoint: parseSapConnection(`${sapBase}/sap/flag`), viewName: DEFAULTS.sap.viewName,
      timezone: 'Asia/Tashkent', connectTimeoutMs: 1000, timeoutMs: 2000, retry: { maxTries: 1, baseDelayMs: 10, maxDelayMs: 10 }, logger,
    }),
  };
}

/** What the steps of `runId` left behind, in both databases. */
async function traces(db: Databases, runId: string, loadId: number) {
  const one = async (pool: Databases['state'], sql: string, values: unknown[]) => (await pool.query<{ n: number }>(sql, values)).rows[0]!.n;
  return {
    loadId: (await db.state.query('select load_id from l2flow.run where run_id = $1', [runId])).rows[0]!.load_id,
    memos: await one(db.state, 'select count(*)::int as n from l2flow.step_memo where run_id = $1', [runId]),
    intents: await one(db.state, 'select count(*)::int as n from l2flow.step_intent where run_id = $1', [runId]),
    sessions: await one(db.dwh, 'select count(*)::int as n from md.data_load_session where load_id = $1', [loadId]),
    logLines: await one(db.dwh, 'select count(*)::int as n from md.session_log where load_id = $1', [loadId]),
    childCalls: await one(db.dwh, 'select count(*)::int as n from public.child_calls where load_id = $1', [loadId]),
    sapRecords: await one(db.state, 'select count(*)::int as n from l2flow.sap_send where run_id = $1', [runId]),
  };
}

describe.each([
  ['one database', false],
  ['a separate state database', true],
] as const)('the owner fence, %s', (_label, split) => {
  let one: TestDb | undefined;
  let two: SplitDbs | undefined;
  let db: Databases;
  let connections: DedicatedConnections;
  let sap: TestSapServer;
  let dates = 0;

  beforeAll(async () => {
    if (split) {
      two = await createSplitTestDbs();
      db = two.db;
    } else {
      one = await createTestDb();
      db = { state: one.pool, dwh: one.pool };
    }
    await db.dwh.query('create table public.child_calls (logical_date date, load_id bigint)');
    await createSegmentationView(db.dwh, 3);
    connections = createDedicatedConnections({ connectionString: split ? two!.dwh.uri : one!.uri, max: 2, applicationName: 'l2flow-child' });
    sap = await startSapServer();
  });
  afterAll(async () => {
    await connections.end();
    await sap.close();
    await (split ? two!.drop() : one!.drop());
  });

  /** A run owned by OTHER (taken over) and the context its steps get in this process. */
  async function takenOverRun(loadId: number): Promise<StepContext> {
    const d = `2025-03-${String(++dates).padStart(2, '0')}`;
    const { run } = await createRun(db.state, { workflowId: WF, logicalDate: d, businessDate: d, triggeredBy: 'manual' });
    expect(await takeRun(db.state, run.run_id, OTHER)).not.toBeNull();
    return { runId: run.run_id, workflowId: WF, logicalDate: d, businessDate: d, attempt: 1, loadId, owner: ME };
  }

  it('refuses every step of a process that no longer owns the run, leaving nothing behind', async () => {
    const s = services(db, connections, sap.base);
    const ctx = await takenOverRun(9001);
    /** The step failed with the fence's refusal (what the runtime turns into NOT_OWNER and stops the run on). */
    const refused = async (step: Promise<unknown>) => {
      const err = await step.then(() => undefined, (e: unknown) => e);
      expect(notOwnerError(err), String(err)).toMatchObject({ code: 'NOT_OWNER', message: expect.stringContaining(`executed by ${OTHER}`) });
    };
    await refused(s.md.getLoadId({ ...ctx, loadId: null }, signal));
    await refused(s.md.workflowRegistration(ctx, signal));
    for (const child of Object.keys(children)) await refused(s.children.run(child)(ctx, signal));
    await refused(s.sap(ctx, signal));
    await refused(s.md.end(ctx, signal));
    await refused(s.md.recordFailure({ ...ctx, failure: { step: 'end', code: 'DB_ERROR', message: 'x' } }, signal));

    // Refused before any work: even the child that commits by itself (no transaction to roll back) did not run.
    expect(await traces(db, ctx.runId, 9001)).toEqual({
      loadId: null, memos: 0, intents: 0, sessions: 0, logLines: 0, childCalls: 0, sapRecords: 0,
    });
    expect(sap.requests).toHaveLength(0);
  });

  it('lets the owner through: the same calls record every step', async () => {
    const s = services(db, connections, sap.base);
    const ctx = { ...(await takenOverRun(0)), owner: OTHER };
    const { loadId } = await s.md.getLoadId({ ...ctx, loadId: null }, signal);
    const run = { ...ctx, loadId };
    await s.md.workflowRegistration(run, signal);
    for (const child of Object.keys(children)) await s.children.run(child)(run, signal);
    await s.sap(run, signal);
    await s.md.end(run, signal);
    expect(await traces(db, ctx.runId, loadId)).toEqual({
      loadId: String(loadId), memos: 5, intents: 0, sessions: 1, logLines: 2, childCalls: 2, sapRecords: 1,
    });
    expect(sap.requests).toHaveLength(1);
  });
});
