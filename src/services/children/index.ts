/** Child workflows: SQL statements in the warehouse and the builtin session killer (cancellable on the server), and DAGs in Airflow. */
export { createChildRunner, type ChildConfig, type ChildResult, type ChildRunner } from './runner.js';
export { dagRunIdOf, type AirflowChildConfig } from './airflow/child.js';
export { describeAirflowEndpoint, parseAirflowConnection, type AirflowApiVersion, type AirflowEndpoint } from './airflow/connection.js';
