/** Database helpers every service shares: transactions, step memos (exactly-once writes) and cross-process pool slots. */
export { ASYNC_COMMIT, checkout, inTransaction, placeholdersIn, prepared, isQualifiedName, quoteQualified, withTransaction, type CheckedOutClient } from './sql.js';
export { commitWithMemo, INTENT_WAIT, memoized, memoizedStatement, isAlreadyRecorded, isMemoConflict, RECORDED, ownerOf, readMemo, recordedOutput, separateState, writeMemo, type Databases, type IntentWait, type Queryable, type StepStatement } from './step-memo.js';
export { createPools, type HeldLock, type Pools, type PoolsOptions, type SessionLocks } from './pools.js';
export { createDedicatedConnections, type ChildConnection, type DedicatedConnections } from './connections.js';
