import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestDb, type TestDb } from '../helpers/db.js';
import { checkFlagTrigger, migrate } from '../../src/runtime/migrate.js';

describe('migrations', () => {
  let db: TestDb;
  beforeAll(async () => { db = await createTestDb({ migrate: false }); });
  afterAll(async () => { await db.drop(); });

  it('keeps an existing md table and its rows, applies each file once and installs the flag trigger', async () => {
    await db.pool.query(`create schema md; create table md.dwh_flag (flag_cd text, bussines_date date, extra text);
      insert into md.dwh_flag values ('x', '2024-01-01', 'kept')`);
    expect(await checkFlagTrigger(db.pool, 'md.dwh_flag')).toMatch(/l2flow migrate/);
    const first = await migrate(db.pool, { flagTable: 'md.dwh_flag' });
    expect(first.applied).toEqual(['001_l2flow.sql', '002_md.sql', '003_sap_send_error.sql', '004_schedule.sql', '005_attempts_audit.sql', '006_deadlines.sql']);
    const again = await migrate(db.pool, { flagTable: 'md.dwh_flag' });
    expect(again.applied).toEqual([]);
    const { rows } = await db.pool.query('select extra from md.dwh_flag');
    expect(rows).toEqual([{ extra: 'kept' }]);
    expect(await checkFlagTrigger(db.pool, 'md.dwh_flag')).toBeNull();
  });

  it('notify off (flagTrigger: false): no trigger installed, and the start-up check asks only for the table', async () => {
    await db.pool.query('create table md.their_flag (flag_cd text, bussines_date date)');
    expect(await migrate(db.pool, { flagTable: 'md.their_flag', flagTrigger: false })).toEqual({ applied: [], flagTrigger: 'skipped' });
    const { rows } = await db.pool.query(`select 1 from pg_trigger where tgrelid = 'md.their_flag'::regclass`);
    expect(rows).toEqual([]);
    expect(await checkFlagTrigger(db.pool, 'md.their_flag', { trigger: false })).toBeNull();
    expect(await checkFlagTrigger(db.pool, 'md.their_flag')).toMatch(/l2flow migrate.*or set sensors\.wait_for_l2_full_load\.notify: false \(L2FLOW_FLAG_NOTIFY=false\)/);
    expect(await checkFlagTrigger(db.pool, 'md.no_such_flag', { trigger: false })).toMatch(/does not exist/);
  });

  it('names the fix when the flag table is missing', async () => {
    expect(await checkFlagTrigger(db.pool, 'md.no_such_flag')).toMatch(/does not exist.*l2flow migrate/);
  });
});
