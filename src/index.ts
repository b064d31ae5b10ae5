/**
 * l2flow as a library: `createL2flow()` builds the runtime from a settings object and/or the environment, with
 * start/stop, trigger, cancel, run queries, migrations and the stream of run events. The `l2flow` CLI is built on it.
 */

export { createL2flow, L2flowError } from './runtime/api.js';
export type { ActionOptions, ClearOptions, ConfigObject, L2flow, L2flowErrorCode, L2flowOptions, RunDetails } from './runtime/api.js';
export type { ClearedRun } from './runtime/run-actions.js';
export type { ClearPlan } from './machines/clear-plan.js';
export type { AuditAction, AuditRow } from './runtime/audit.js';
export { ConfigError } from './runtime/config.js';
export type { ChildConfig, Config } from './runtime/config.js';
export type { RunEvent } from './runtime/supervisor.js';
export type { StepEnd } from './runtime/step-ends.js';
export type { MetricsProvider } from './runtime/metrics.js';
export type { RunRow, RunStatus, RunSummary, StepRow } from './runtime/run-store.js';
export type { BackfillDate, BackfillVerdict } from './runtime/backfill.js';
export type { MigrateResult } from './runtime/migrate.js';
export type { EmailOutboxStatus } from './services/mail/index.js';
export type { ErrorInfo } from './lib/errors.js';
export type { Logger } from './runtime/logger.js';
