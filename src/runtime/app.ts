import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { filter, map, Subject, type Observable } from 'rxjs';
import { fromPromise, type InspectionEvent, type Observer } from 'xstate';
import { workflowMachine, type WorkflowMachine } from '../machines/workflow.js';
import { createChildRunner } from '../services/children/index.js';
import { createRateLimitedWarn } from '../lib/log.js';
import { createEmailDispatcher, createFailureNotifier, type EmailDispatcher } from '../services/mail/index.js';
import { createMailer } from '../services/mail/index.js';
import { createMetadata } from '../services/metadata.js';
import { createDedicatedConnections, createPools, type DedicatedConnections, type Pools } from '../services/db/index.js';
import { createSapSender, describeSapEndpoint, parseSapConnection } from '../services/sap/index.js';
import { createCheckRecorder, createFlagSeeds, createFlagSensor, createPreviousRunSensor, flagDates, RUN_CHANNEL, type FlagSeeds, type SensorCheck } from '../services/sensors/index.js';
import { notOwnerError, StepError, toErrorInfo } from '../lib/errors.js';
import type { StepContext, StepFn } from '../services/types.js';
import { poolOf, STEP_CHILDREN, type ChildStep } from '../machines/steps.js';
import { stateIsWarehouse, type Config } from './config.js';
import type { Logger } from './logger.js';
import type { NotificationHub } from './notification-hub.js';
import { createHubs, createPool, createWarehousePool } from './databases.js';
import { createRunLocks } from './run-locks.js';
import { createSupervisor, type Supervisor } from './supervisor.js';
import { createScheduler, type Scheduler } from './scheduler.js';
import { createDeadlineWatch } from './deadline-watch.js';
import { createMetrics, type MetricsProvider } from './metrics.js';
import type { SapTry } from '../services/sap/index.js';
import {
  checkSameDatabase, createDeliveryCheck, deliveryCheckChannel, LISTEN_VARIABLE, pollingAloneMessage, silentListenerMessage, type NotifyDelivery,
} from './listen-check.js';

export type { SensorCheck } from '../services/sensors/index.js';

/**
 * The host process: builds every service from the configuration, provides them to the machine as named actors,
 * and runs the supervisor. Data flows one way: runtime → services → machine.provide → actors → snapshots back.
 */

export interface App {
  config: Config;
  /** l2flow's own tables (schema l2flow). */
  pool: pg.Pool;
  /** The warehouse (md tables, flag table, SAP view): the same object as `pool` unless connection id `state` is set. */
  dwh: pg.Pool;
  hub: NotificationHub;
  supervisor: Supervisor;
  /** schedule.cron and schedule.onFlag, active while this process leads. */
  scheduler: Scheduler;
  dispatcher: EmailDispatcher;
  machine: WorkflowMachine;
  owner: string;
  /**
   * Every check query of both sensors (wait_for_l2_full_load, wait_for_success_end), emitted when it answered
   * or failed: the hook for metrics and dashboards (pokes per sensor and reason, check latency = finishedAt −
   * startedAt, failed checks). Hot, no replay; emitted synchronously inside the sensor's check loop, so
   * subscribers must be cheap and must not throw (rxjs reports a throwing subscriber as an uncaught error).
   * Completes on stop().
   */
  sensorChecks$: Observable<SensorCheck>;
  /** Prometheus exposition of this runtime (own registry) plus the process metrics: what `/metrics` serves. */
  metrics: MetricsProvider;
  /** Whether a NOTIFY sent through the query pool reaches the LISTEN connection (tested after every (re)connect). */
  notifyDelivery(): NotifyDelivery;
  start(): Promise<void>;
  stop(): Promise<void>;
}

export interface AppOptions {
  /** The shared pool of l2flow's tables, when the caller owns it (the embedding API); at most config.poolSize connections. */
  pool?: pg.Pool;
  /** The warehouse's pool, when the caller owns it and the state database is separate; ignored (= pool) otherwise. */
  dwhPool?: pg.Pool;
  /** Override polling cadences for tests and benchmarks. */
  claimIntervalMs?: number;
  mailPollIntervalMs?: number;
  mailRetryBaseDelayMs?: number;
  heartbeatMs?: number;
  /** How long the NOTIFY self-test waits for its notification on the listener (default 2 s). */
  notifyCheckTimeoutMs?: number;
  /** The scheduler's wall clock (tests move it). */
  now?: () => Date;
  /** Passed as `inspect` to every run's actor (the Stately inspector, see inspect.ts). */
  inspect?: Observer<InspectionEvent>;
}

/**
 * Wrap a plain step function as a named promise actor: the signal is XState's, aborted when the state is left. The
 * step's input carries `owner`, the process executing the run, which every write recording a step asserts; a refusal
 * (the run was taken over) reaches the machine as NOT_OWNER, which the live run stops on (live-run.ts).
 */
function stepActor(owner: string | undefined) {
  return function actor<I extends object>(fn: StepFn<I, unknown>) {
    return fromPromise<unknown, I>(async ({ input, signal }) => {
      try {
        return await fn(owner === undefined ? input : { ...input, owner }, signal);
      } catch (err) {
        throw notOwnerError(err) ?? err;
      }
    });
  };
}

/** Every step's implementation, built from the configuration; the runtime's only knowledge of what a step does. */
export function buildActors(d: {
  config: Config;
  /** l2flow's own tables. */
  pool: pg.Pool;
  /** The warehouse; the same object as `pool` when l2flow's tables live there. */
  dwh: pg.Pool;
  notifications$: Observable<{ channel: string; payload: unknown }>;
  reconnects$: Observable<void>;
  pools: Pools;
  childConnections: DedicatedConnections;
  logger: Logger;
  onMailQueued: () => void;
  /** Every sensor check query, once done (see App.sensorChecks$). */
  onSensorCheck?: (e: SensorCheck) => void;
  /** Every POST to SAP, once answered or not (metrics). */
  onSapTry?: (t: SapTry) => void;
  /** Runs created by the statement that read their flag (schedule.onFlag): the flag sensor does not look again. */
  flagSeeds?: FlagSeeds;
  /** This process, asserted as the run's owner by every write that records a step (sql/008); absent: not asserted. */
  owner?: string;
}) {
  const { config, pool, dwh, logger } = d;
  const actor = stepActor(d.owner);
  const sensorDeps = {
    pool,
    notifications$: d.notifications$,
    reconnects$: d.reconnects$,
    logger: logger.child({ module: 'sensor' }),
    onCheck: d.onSensorCheck,
  };
  const metadata = createMetadata({ pool, dwh, completionFlag: config.completionFlag, logger: logger.child({ module: 'metadata' }) });
  const children = createChildRunner({
    pool,
    dwh,
    connections: d.childConnections,
    children: config.children,
    airflowConnections: config.airflowConnections,
    logger: logger.child({ module: 'children' }),
  });
  const sendToSap = createSapSender({
    pool,
    dwh,
    endpoint: parseSapConnection(config.connections.sap),
    viewName: config.sap.viewName,
    timezone: config.timezone,
    connectTimeoutMs: config.sap.connectTimeoutMs,
    timeoutMs: config.sap.timeoutMs,
    retry: { maxTries: config.sap.maxTries, baseDelayMs: config.sap.retryBaseDelayMs, maxDelayMs: config.sap.retryMaxDelayMs },
    logger: logger.child({ module: 'sap' }),
    onTry: d.onSapTry,
  });
  const notifyFailure = createFailureNotifier({
    pool,
    recipients: config.email.recipients,
    logger,
    onQueued: d.onMailQueued,
  });
  /** A child step as the step table says: its child workflow, inside a slot of its pool when it names one. */
  const childStep = (step: ChildStep) => {
    const run = children.run(STEP_CHILDREN[step]);
    const pool = poolOf(step);
    return actor<StepContext>((input, signal) =>
      pool ? d.pools.withSlot(pool, signal, () => run(input, signal), { runId: input.runId, step }) : run(input, signal),
    );
  };

  return {
    waitForL2FullLoad: actor(createFlagSensor({ ...sensorDeps, dwh, ...config.flagSensor, ...(d.flagSeeds ? { seeds: d.flagSeeds } : {}) })),
    getLoadId: actor(metadata.getLoadId) as ReturnType<typeof fromPromise<{ loadId: number }, StepContext>>,
    workflowRegistration: actor(metadata.workflowRegistration),
    waitForSuccessEnd: actor(
      createPreviousRunSensor({
        ...sensorDeps,
        startDate: config.startDate,
        executionDeltaDays: config.successEndSensor.executionDeltaDays,
        pokeIntervalMs: config.successEndSensor.pokeIntervalMs,
        whenMissing: config.successEndSensor.whenMissing,
        whenFailed: config.successEndSensor.whenFailed,
        timezone: config.timezone,
      }),
    ),
    runSysKillAllSessionPg: childStep('run_sys_kill_all_session_pg'),
    runWfDataPreparationForReports: childStep('run_wf_data_preparation_for_reports'),
    loadDsClientSegmentation: childStep('load_ds_client_segmentation'),
    sendFlgToSap: actor(sendToSap),
    end: actor(metadata.end),
    emailOnFailure: actor<Parameters<typeof notifyFailure>[0]>(async (input, signal) => {
      // Taken over: the run is not this process's to fail or report (the live run stops on this failure).
      if (input.failure.code === 'NOT_OWNER') throw new StepError('NOT_OWNER', input.failure.message);
      // The metadata close is best effort: the mail must go out even when the warehouse is what failed.
      await metadata.recordFailure(input, signal).catch((err: unknown) => {
        if (notOwnerError(err)) throw err;
        logger.error({ runId: input.runId, err: toErrorInfo(err) }, 'could not record the failure in md tables');
      });
      return notifyFailure(input, signal);
    }),
  };
}

/** Build the runtime from a validated configuration. Nothing connects until `start()`. */
export function createApp(config: Config, logger: Logger, opts: AppOptions = {}): App {
  const owner = `${hostname()}:${process.pid}:${randomBytes(3).toString('hex')}`;
  // application_name starts with l2flow: the builtin session killer never terminates our own connections.
  // The pool is l2flow's whole share of the server besides the listener, the lock connection and the child
  // statements executing now: however many runs are active or parked, no more connections are opened.
  const ownPool = !opts.pool;
  const pool = opts.pool ?? createPool(config);
  const ownDwh = stateIsWarehouse(config) ? null : opts.dwhPool ? null : createWarehousePool(config);
  const dwh = stateIsWarehouse(config) ? pool : (opts.dwhPool ?? ownDwh!);
  // A restart kills every idle connection at once: one line per outage, not one per connection.
  const poolWarn = createRateLimitedWarn(logger, 60_000);
  pool.on('error', (err) => poolWarn('pool', { err: toErrorInfo(err) }, 'idle database connection failed; the pool replaces it'));
  ownDwh?.on('error', (err) => poolWarn('dwh-pool', { err: toErrorInfo(err) }, 'idle warehouse connection failed; the pool replaces it'));
  const checkChannel = deliveryCheckChannel();
  const notifyCheckTimeoutMs = opts.notifyCheckTimeoutMs ?? 2_000;
  const hub = createHubs(config, logger, {
    heartbeatMs: opts.heartbeatMs,
    extraChannels: [checkChannel],
    checkChannels: () => notifyCheck.status().state !== 'silent',
  });
  // Sent through the warehouse's query pool, the way a sensor's query goes: a pooler there that swallows NOTIFYs shows.
  const notifyCheck = createDeliveryCheck({
    channel: checkChannel,
    notifications$: hub.notifications$,
    connected$: hub.connected$,
    send: (channel, payload) => dwh.query('select pg_notify($1, $2)', [channel, payload]),
    timeoutMs: notifyCheckTimeoutMs,
    logger,
    silentMessage: silentListenerMessage(config, notifyCheckTimeoutMs),
  });
  const childConnections = createDedicatedConnections({
    connectionString: config.connections.dwh,
    max: config.childConnections,
    applicationName: 'l2flow-child',
  });
  const metrics = createMetrics({ workflowId: config.workflowId, pool, dwh, childConnections, logger });
  const mailer = createMailer({ smtpUri: config.connections.smtp, from: config.email.from, logger });
  const dispatcher = createEmailDispatcher({
    pool,
    mailer,
    logger,
    onSend: metrics.mailSend,
    ...(opts.mailPollIntervalMs ? { pollIntervalMs: opts.mailPollIntervalMs } : {}),
    ...(opts.mailRetryBaseDelayMs ? { baseDelayMs: opts.mailRetryBaseDelayMs } : {}),
  });
  // Advisory locks coordinate l2flow processes: they live beside l2flow's tables.
  const locks = createRunLocks({ connectionString: config.connections.state, maxActiveRuns: config.maxActiveRuns, workflowId: config.workflowId });
  const pools = createPools({ locks, pools: config.pools, logger, onAcquired: metrics.slotAcquired });
  const sensorChecks = new Subject<SensorCheck>();
  const recordCheck = createCheckRecorder({ pool, logger });
  const flagSeeds = createFlagSeeds();
  const machine = workflowMachine.provide({
    actors: buildActors({
      config,
      pool,
      dwh,
      notifications$: hub.notifications$,
      reconnects$: hub.connected$,
      pools,
      childConnections,
      logger,
      onMailQueued: () => dispatcher.kick(),
      onSapTry: metrics.sapTry,
      flagSeeds,
      owner,
      onSensorCheck: (e) => {
        recordCheck(e);
        sensorChecks.next(e);
      },
    }),
  });
  const supervisor = createSupervisor({
    pool,
    locks,
    machine,
    workflowId: config.workflowId,
    owner,
    maxActiveRuns: config.maxActiveRuns,
    sensorTimeoutMs: { wait_for_l2_full_load: config.flagSensor.timeoutMs, wait_for_success_end: config.successEndSensor.timeoutMs },
    runTimeoutMs: config.runTimeoutMs,
    retry: config.retry,
    ...(opts.inspect ? { inspect: opts.inspect } : {}),
    runNotifications$: hub.notifications$.pipe(
      filter((n) => n.channel === RUN_CHANNEL),
      map((n) => n.payload as { status?: unknown; workflow_id?: unknown }),
    ),
    reconnects$: hub.connected$,
    logger,
    claimIntervalMs: opts.claimIntervalMs ?? config.claimIntervalMs,
    onRunFailed: () => dispatcher.kick(),
  });
  const scheduler = createScheduler({
    pool,
    dwh,
    config,
    leadership$: supervisor.leadership$,
    flagHints$: flagDates(hub.notifications$, config.flagSensor.flagCode),
    reconnects$: hub.connected$,
    logger,
    adopt: supervisor.adopt,
    seeds: flagSeeds,
    ...(opts.now ? { now: opts.now } : {}),
  });
  const deadlines = createDeadlineWatch({
    pool, config, logger, isLeader: supervisor.isLeader, onQueued: () => dispatcher.kick(),
    intervalMs: opts.claimIntervalMs ?? config.claimIntervalMs,
  });
  metrics.watch({
    runEvents$: supervisor.events$, sensorChecks$: sensorChecks, listenerConnected$: hub.connected$, listenerUp: hub.isConnected,
    lockRelocked$: locks.relocked$, lockLost$: locks.lost$, activeRuns: () => supervisor.activeRunIds().length, isLeader: supervisor.isLeader,
  });
  let stopping: Promise<void> | undefined;
  logger.info({
    owner, sap: describeSapEndpoint(parseSapConnection(config.connections.sap)),
    stateDatabase: stateIsWarehouse(config) ? 'the warehouse' : `separate (connection ${config.connectionIds.state})`,
  }, 'l2flow runtime built');

  return {
    config,
    pool,
    dwh,
    hub,
    supervisor,
    scheduler,
    dispatcher,
    machine,
    owner,
    sensorChecks$: sensorChecks.asObservable(),
    metrics,
    notifyDelivery: notifyCheck.status,
    async start() {
      if (config.connections.dwhListen) {
        await checkSameDatabase({ pool: dwh, listenUri: config.connections.dwhListen, variable: LISTEN_VARIABLE, logger });
      }
      if (!config.flagSensor.notify) logger.warn({ pokeIntervalMs: config.flagSensor.pokeIntervalMs }, pollingAloneMessage(config));
      notifyCheck.start();
      await hub.start();
      dispatcher.start();
      scheduler.start();
      await supervisor.start();
      deadlines.start();
    },
    stop() {
      // Once: a second stop (a replica stopped by a test, then by its teardown) waits for the first.
      stopping ??= (async () => {
        await scheduler.stop();
        await deadlines.stop();
        await supervisor.stop();
        // The sensors' last checks (reported on the next turn), held for a second before they are written: written now.
        await new Promise((resolve) => setImmediate(resolve));
        await recordCheck.flush();
        await pools.close();
        await locks.end();
        await childConnections.end();
        await dispatcher.stop();
        notifyCheck.stop();
        await hub.stop();
        await mailer.close();
        metrics.stop();
        if (ownPool) await pool.end();
        await ownDwh?.end();
        sensorChecks.complete();
      })();
      return stopping;
    },
  };
}
