import http from 'node:http';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { Logger } from '../logger.js';

/**
 * The demo's stand-ins for SAP and the mail server: real servers on 127.0.0.1 (random ports) in this process that
 * accept everything and log what they got, so a user sees what l2flow would have sent.
 */

export interface Receiver {
  /** The connection URI l2flow is given (L2FLOW_CONN_SAP_CONN / L2FLOW_CONN_SMTP_DEFAULT). */
  uri: string;
  close(): Promise<void>;
}

/** SAP's readiness endpoint: answers 200 to every POST and logs its body and Idempotency-Key. */
export async function startSapReceiver(logger: Logger): Promise<Receiver> {
  const log = logger.child({ module: 'demo-sap' });
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString();
      let body: unknown = text;
      try {
        body = JSON.parse(text);
      } catch {
        // logged as text
      }
      log.info({ method: req.method, path: req.url, idempotencyKey: req.headers['idempotency-key'], body }, `SAP (demo receiver) got ${req.method} ${req.url}`);
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    uri: `http://127.0.0.1:${(server.address() as AddressInfo).port}/sap/readiness`,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Decode RFC 2047 encoded words (=?UTF-8?B?…?= / =?UTF-8?Q?…?=) of a header value. */
export function decodeHeader(value: string): string {
  return value.replace(/=\?([^?]+)\?([BbQq])\?([^?]*)\?=\s*/g, (_m, _charset: string, enc: string, text: string) =>
    enc.toUpperCase() === 'B'
      ? Buffer.from(text, 'base64').toString('utf8')
      : Buffer.from(text.replace(/_/g, ' ').replace(/=([0-9A-Fa-f]{2})/g, (_x, h: string) => String.fromCharCode(parseInt(h, 16))), 'latin1').toString('utf8'),
  );
}

/** The Subject header of a raw message (folded lines joined, encoded words decoded). */
export function subjectOf(raw: string): string {
  const head = raw.split(/\r?\n\r?\n/, 1)[0] ?? '';
  const m = /^subject:[ \t]*(.*(?:\r?\n[ \t].*)*)/im.exec(head);
  return m ? decodeHeader(m[1]!.replace(/\r?\n[ \t]+/g, ' ').trim()) : '';
}

/** An SMTP server accepting every mail (any or no login), logging each one's recipients and subject. */
export async function startMailReceiver(logger: Logger): Promise<Receiver> {
  const log = logger.child({ module: 'demo-mail' });
  const server = new SMTPServer({
    authOptional: true,
    allowInsecureAuth: true,
    disabledCommands: ['STARTTLS'],
    disableReverseLookup: true,
    logger: false,
    closeTimeout: 100,
    onAuth(_auth, _session, cb) {
      cb(null, { user: 'demo' });
    },
    onData(stream, session, cb) {
      const chunks: Buffer[] = [];
      stream.on('data', (c: Buffer) => chunks.push(c));
      stream.on('end', () => {
        const to = session.envelope.rcptTo.map((a) => a.address);
        log.info({ to, subject: subjectOf(Buffer.concat(chunks).toString('utf8')) }, `mail (demo receiver) to ${to.join(', ')}`);
        cb();
      });
    },
  });
  server.on('error', () => undefined); // a client that hangs up mid-session is not our problem
  await new Promise<void>((resolve, reject) => {
    server.server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  return {
    uri: `smtp://127.0.0.1:${(server.server.address() as AddressInfo).port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
