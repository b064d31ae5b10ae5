/** Child workflows: SQL statements in the warehouse and the builtin session killer, cancellable on the server. */
export { createChildRunner, type ChildConfig, type ChildResult, type ChildRunner } from './runner.js';
