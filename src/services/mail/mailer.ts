import type { SMTPTransportOptions, Transporter } from 'nodemailer';
import { CONNECTION_KINDS, parseConnection, redactor } from '../../lib/connection.js';
import type { Logger } from '../types.js';

/** An SMTP connection read from an Airflow-style URI: nodemailer options plus the optional sender. */
export interface SmtpConnection {
  transport: SMTPTransportOptions;
  from: string | undefined;
}

/** A mail as the mailer sends it: plain text with an HTML alternative. */
export interface MailMessage {
  to: string[];
  subject: string;
  text: string;
  html: string;
}

/** What the server said about a mail it accepted; `rejected` lists recipients it refused while accepting the others. */
export interface SendResult {
  messageId: string;
  accepted: string[];
  rejected: string[];
}

export interface Mailer {
  send(msg: MailMessage, signal?: AbortSignal): Promise<SendResult>;
  /** Where mail goes, without secrets: `smtp://user@host:587 (STARTTLS if offered), from …`. */
  describe(): string;
  close(): void;
}

/**
 * A failed send with nodemailer's stable `code` (EAUTH, ESOCKET, ECONNECTION, EENVELOPE, ETIMEDOUT …) and, when the
 * server answered, its `responseCode`. The message never contains the password. There is deliberately no `cause`:
 * pino prints cause messages, and nodemailer's error can carry unscrubbed server text.
 */
export class MailError extends Error {
  override readonly name = 'MailError';
  readonly code: string;
  readonly responseCode: number | undefined;
  /** True when the server refused for good (5xx); retrying the same mail will likely fail the same way. */
  readonly permanent: boolean;
  readonly originalCode: string | undefined;

  constructor(code: string, message: string, extra: { responseCode?: number; permanent?: boolean; originalCode?: string } = {}) {
    super(message);
    this.code = code;
    this.responseCode = extra.responseCode;
    this.permanent = extra.permanent ?? false;
    this.originalCode = extra.originalCode;
  }

  /** "ECONNECTION ECONNREFUSED 421: message": every code the failure carries, as the outbox's last_error keeps it. */
  get summary(): string {
    const codes = [this.code, this.originalCode, this.responseCode].filter((c) => c !== undefined).join(' ');
    return `${codes}: ${this.message}`;
  }
}

const QUERY_OPTIONS = ['from', 'from_email', 'secure', 'disable_ssl', 'starttls', 'disable_tls', 'timeout', 'retry_limit'];

function flag(params: URLSearchParams, name: string): boolean | undefined {
  const v = params.get(name);
  if (v === null) return undefined;
  if (/^(true|1|yes)$/i.test(v)) return true;
  if (/^(false|0|no)$/i.test(v)) return false;
  throw new Error(`SMTP connection URI: ?${name}= must be true or false`);
}

/** The connection parser's reading of an SMTP URI, turned into nodemailer options; `secrets` for scrubbing. */
function readSmtpConnection(uri: string): { connection: SmtpConnection; secrets: string[] } {
  const parsed = parseConnection(uri, 'smtp');
  const url = new URL(parsed.url);
  const params = url.searchParams;
  // Airflow's form for extras given as JSON; a parameter written in the query wins.
  for (const [k, v] of Object.entries(parsed.extra)) if (!params.has(k)) params.set(k, String(v));
  const unknown = [...params.keys()].filter((k) => !QUERY_OPTIONS.includes(k));
  if (unknown.length > 0) {
    throw new Error(`SMTP connection URI: unknown option ${unknown.map((k) => `?${k.slice(0, 40)}`).join(', ')}; known: ${QUERY_OPTIONS.join(', ')}`);
  }

  const disableSsl = flag(params, 'disable_ssl');
  const secure = flag(params, 'secure') ?? (disableSsl === undefined ? url.protocol === 'smtps:' : !disableSsl);
  const disableTls = flag(params, 'disable_tls');
  const starttls = flag(params, 'starttls') ?? (disableTls === undefined ? undefined : !disableTls);
  const timeout = params.get('timeout');
  const timeoutS = timeout === null ? undefined : Number(timeout);
  if (timeoutS !== undefined && !(timeoutS > 0)) throw new Error('SMTP connection URI: ?timeout= must be a positive number of seconds');

  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  const transport: SMTPTransportOptions = { host, port: url.port ? Number(url.port) : secure ? 465 : 587, secure };
  if (!secure && starttls === true) transport.requireTLS = true;
  if (!secure && starttls === false) transport.ignoreTLS = true;
  if (timeoutS !== undefined) transport.connectionTimeout = timeoutS * 1000;
  if (parsed.auth.type === 'basic') {
    if (!parsed.auth.user) throw new Error(`SMTP connection URI has a password but no user name: ${CONNECTION_KINDS.smtp.help}`);
    transport.auth = { user: parsed.auth.user, pass: parsed.auth.password };
  }
  const from = params.get('from') ?? params.get('from_email') ?? undefined;
  return { connection: { transport, from: from || undefined }, secrets: parsed.secrets };
}

/**
 * Parse an Airflow SMTP connection URI (`smtp://user:pass@host:587`, `smtps://…:465`) into nodemailer options.
 * Query options: `from` (or Airflow's `from_email`), `secure` (or `disable_ssl`), `starttls` (or `disable_tls`),
 * `timeout` in seconds; Airflow's `retry_limit` is accepted and ignored (the outbox retries).
 */
export function parseSmtpConnection(uri: string): SmtpConnection {
  return readSmtpConnection(uri).connection;
}

function describeTransport(t: SMTPTransportOptions): string {
  const user = t.auth?.user ? `${encodeURIComponent(t.auth.user)}@` : '';
  const tls = t.secure ? 'TLS' : t.requireTLS ? 'STARTTLS required' : t.ignoreTLS ? 'no TLS' : 'STARTTLS if offered';
  return `${t.secure ? 'smtps' : 'smtp'}://${user}${t.host}:${t.port} (${tls})`;
}

function toMailError(err: unknown, where: string, scrub: (s: string) => string): MailError {
  const e = (err ?? {}) as { code?: unknown; message?: unknown; responseCode?: unknown; permanent?: unknown; originalCode?: unknown };
  const code = typeof e.code === 'string' ? e.code : 'EMAIL';
  const originalCode = typeof e.originalCode === 'string' ? e.originalCode : undefined;
  const message = scrub(typeof e.message === 'string' ? e.message : String(err));
  const extra: { responseCode?: number; permanent?: boolean; originalCode?: string } = {};
  if (typeof e.responseCode === 'number') extra.responseCode = e.responseCode;
  if (typeof e.permanent === 'boolean') extra.permanent = e.permanent;
  if (originalCode) extra.originalCode = originalCode;
  return new MailError(code, `${message} (${where})`, extra);
}

/** A mailer over one SMTP connection URI; every send opens its own connection, so a server restart never leaves a stale one. */
export function createMailer(opts: {
  smtpUri: string;
  /** Sender address; falls back to the URI's `?from=`. */
  from?: string;
  logger: Logger;
  connectionTimeoutMs?: number;
  socketTimeoutMs?: number;
}): Mailer {
  const { connection: conn, secrets } = readSmtpConnection(opts.smtpUri);
  const from = opts.from ?? conn.from;
  if (!from) throw new Error('No sender address for failure mail: pass `from` or add ?from=address to the SMTP connection URI');
  const connectionTimeout = opts.connectionTimeoutMs ?? conn.transport.connectionTimeout ?? 10_000;
  // nodemailer is loaded at the first send, not at start-up: most days no mail is sent.
  let transport: Promise<Transporter> | null = null;
  const transporter = () =>
    (transport ??= import('nodemailer').then((m) =>
      m.default.createTransport({
        ...conn.transport,
        connectionTimeout,
        greetingTimeout: connectionTimeout,
        socketTimeout: opts.socketTimeoutMs ?? 60_000,
        logger: false,
      }),
    ));
  const where = describeTransport(conn.transport);
  const scrub = redactor(secrets);
  const log = opts.logger.child({ module: 'mailer' });
  log.debug({ smtp: where }, 'mailer ready');

  return {
    async send(msg, signal) {
      if (msg.to.length === 0) throw new MailError('EENVELOPE', 'mail has no recipients');
      try {
        const info = await (await transporter()).sendMail({ from, to: msg.to, subject: msg.subject, text: msg.text, html: msg.html, signal });
        const addrs = (xs: unknown[] | undefined) => (xs ?? []).map((x) => (typeof x === 'string' ? x : (x as { address: string }).address));
        return { messageId: info.messageId, accepted: addrs(info.accepted), rejected: addrs(info.rejected) };
      } catch (err) {
        throw toMailError(err, where, scrub);
      }
    },
    describe: () => `${where}, from ${from}`,
    close: () => void transport?.then((t) => t.close(), () => undefined),
  };
}
