import dc from 'node:diagnostics_channel';
import net from 'node:net';
import type { Socket } from 'node:net';
import { createWebSocketInspector } from '@statelyai/inspect';
import { createInspectorServer } from '@statelyai/inspect/server';
import type { InspectionEvent, Observer } from 'xstate';
import type { Logger } from './logger.js';

/**
 * `l2flow run --inspect`: every run's actor reports to the Stately inspector. The relay server
 * (@statelyai/inspect/server: an http page embedding stately.ai/inspect, plus a WebSocket relay that keeps the last
 * 200 messages) runs in this process, and the WebSocket inspector connects to it on loopback. So nobody connecting
 * costs nothing: the inspector never meets a refused connection, which would make it retry every 5 s forever on a
 * timer that keeps the process alive even after stop(). The relay listens on every interface (the package's choice).
 */

export const DEFAULT_INSPECT_PORT = 8090;

export interface RunInspector {
  /** The observer to pass as `inspect` to createActor. */
  inspect: Observer<InspectionEvent>;
  /** The page an operator opens (its browser needs internet for the embedded stately.ai/inspect). */
  url: string;
  /** Stop the inspector and the relay, disconnecting any viewer. */
  stop(): void;
}

/** Resolves when `port` can be listened on; rejects naming the port when it cannot. */
function checkPortFree(port: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) =>
      reject(new Error(`the inspector cannot listen on port ${port} (${err.code ?? err.message}): pick another with --inspect-port`)),
    );
    probe.listen(port, () => probe.close(() => resolve()));
  });
}

/** Start the relay on `port` and an inspector connected to it. */
export async function startInspector(o: { port?: number; logger: Logger }): Promise<RunInspector> {
  const port = o.port ?? DEFAULT_INSPECT_PORT;
  // The package's server has no error handler of its own: a port in use would crash the process, so ask first.
  await checkPortFree(port);
  // The relay does not close its viewers' connections on stop (ws 8 leaves them open), and one open viewer would
  // keep the process alive: collect the relay's sockets as they are accepted, to end them on stop.
  const sockets = new Set<Socket>();
  const onSocket = (message: unknown) => {
    const socket = (message as { socket?: Socket }).socket;
    if (socket?.localPort === port) {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
    }
  };
  dc.subscribe('net.server.socket', onSocket);
  const server = createInspectorServer({ port, autoOpen: false });
  const inspector = createWebSocketInspector({ url: `ws://127.0.0.1:${port}` });
  const url = `http://localhost:${port}`;
  o.logger.info({ url }, 'Stately inspector: open %s (the page embeds stately.ai/inspect; the viewing browser needs internet)', url);
  let stopped = false;
  return {
    inspect: inspector.inspect,
    url,
    stop() {
      if (stopped) return;
      stopped = true;
      inspector.stop();
      for (const s of sockets) s.destroy();
      server.stop();
      dc.unsubscribe('net.server.socket', onSocket);
    },
  };
}
