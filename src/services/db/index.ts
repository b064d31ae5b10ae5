/** Database helpers every service shares: transactions, step memos (exactly-once writes) and cross-process pool slots. */
export { checkout, isQualifiedName, quoteQualified, withTransaction, type CheckedOutClient } from './sql.js';
export { memoized, readMemo, writeMemo, type Queryable } from './step-memo.js';
export { createPools, type Pools, type PoolsOptions } from './pools.js';
