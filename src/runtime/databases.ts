import pg from 'pg';
import { merge } from 'rxjs';
import { DWH_FLAG_CHANNEL, RUN_CHANNEL } from '../services/sensors/index.js';
import { stateIsWarehouse, type Config } from './config.js';
import type { Logger } from './logger.js';
import { createNotificationHub, type NotificationHub } from './notification-hub.js';

/**
 * The process's connections to its databases: the warehouse, and l2flow's own tables, which live in the warehouse
 * unless connection id `state` is set. With one database everything is one pool and one LISTEN connection.
 */

/**
 * The shared pool of one process on l2flow's own tables (the warehouse unless connection id `state` is set): its
 * whole share of that server besides the listener, the locks and children.
 */
export function createPool(config: Config, applicationName = 'l2flow'): pg.Pool {
  // application_name starts with l2flow: the builtin session killer never terminates our own connections.
  return new pg.Pool({ connectionString: config.connections.state, max: config.poolSize, application_name: applicationName });
}

/** The warehouse's pool when l2flow's tables live elsewhere (metadata steps, flag checks, the SAP view); else null: `createPool`'s serves both. */
export function createWarehousePool(config: Config, applicationName = 'l2flow'): pg.Pool | null {
  if (stateIsWarehouse(config)) return null;
  return new pg.Pool({ connectionString: config.connections.dwh, max: config.poolSize, application_name: applicationName });
}

/**
 * The process's notifications: one LISTEN connection when l2flow's tables live in the warehouse; else one on the
 * warehouse (the flag trigger's channel) and one on the state database (the run channel), merged. The warehouse's
 * listener connects to `dwh_listen` when set (around a pooler that never delivers). `extraChannels` (the NOTIFY
 * self-test's) are heard on the warehouse's listener; `checkChannels` is the hub option of that listener.
 */
export function createHubs(config: Config, logger: Logger, opts: {
  heartbeatMs?: number; extraChannels?: string[]; checkChannels?: () => boolean;
} = {}): NotificationHub {
  const hub = (connectionString: string, channels: string[], checkChannels?: () => boolean) =>
    createNotificationHub({
      connectionString, channels, logger,
      ...(opts.heartbeatMs ? { heartbeatMs: opts.heartbeatMs } : {}),
      ...(checkChannels ? { checkChannels } : {}),
    });
  // notify: false: nobody may put a trigger on the flag table, so nothing is sent on its channel.
  const warehouseChannels = [...(config.flagSensor.notify ? [DWH_FLAG_CHANNEL] : []), ...(opts.extraChannels ?? [])];
  const warehouseUri = config.connections.dwhListen ?? config.connections.dwh;
  if (stateIsWarehouse(config)) return hub(warehouseUri, [...warehouseChannels, RUN_CHANNEL], opts.checkChannels);
  const hubs = [hub(warehouseUri, warehouseChannels, opts.checkChannels), hub(config.connections.state, [RUN_CHANNEL])];
  return {
    notifications$: merge(...hubs.map((h) => h.notifications$)),
    // Either reconnect re-checks every parked condition: cheap, and nothing missed in either gap.
    connected$: merge(...hubs.map((h) => h.connected$)),
    start: async () => void (await Promise.all(hubs.map((h) => h.start()))),
    stop: async () => void (await Promise.all(hubs.map((h) => h.stop()))),
    isConnected: () => hubs.every((h) => h.isConnected()),
  };
}
