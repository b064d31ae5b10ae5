import type { AddressInfo } from 'node:net';
import { SMTPServer } from 'smtp-server';
import type { SMTPServerAddress, SMTPServerAuthentication, SMTPServerDataStream, SMTPServerSession } from 'smtp-server';
import { simpleParser } from 'mailparser';
import type { ParsedMail } from 'mailparser';

/** How the test server behaves; change it at any time with `set()`. */
export interface SmtpBehaviour {
  /** Require AUTH with exactly these credentials (wrong ones get 535); unset: any or no login is accepted. */
  user?: string;
  password?: string;
  /** Refuse RCPT TO with `rejectCode` (default 550): every recipient, the listed ones, or those the function picks. */
  rejectRecipients?: boolean | string[] | ((address: string) => boolean);
  rejectCode?: number;
  /** Wait this long after receiving DATA before answering 250. */
  acceptDelayMs?: number;
}

export interface ReceivedMail {
  envelopeFrom: string | null;
  envelopeTo: string[];
  /** The user the client logged in as, if it did. */
  user: string | undefined;
  subject: string;
  text: string;
  html: string;
  messageId: string | undefined;
  receivedAt: number;
  parsed: ParsedMail;
}

export interface TestSmtpServer {
  host: '127.0.0.1';
  /** Fixed for the helper's life, across stop() and restart(). */
  port: number;
  /** An Airflow-style connection URI for this server, with credentials when given. */
  uri(user?: string, pass?: string): string;
  messages: ReceivedMail[];
  rcptAttempts: Array<{ address: string; at: number; accepted: boolean }>;
  authAttempts: Array<{ username: string | undefined; ok: boolean }>;
  /** DATA transfers begun, including those still waiting on `acceptDelayMs`. */
  dataStarted: number;
  set(b: Partial<SmtpBehaviour>): void;
  /** Resolve once at least `count` mails arrived; rejects after `timeoutMs`. */
  waitForMessages(count: number, timeoutMs?: number): Promise<ReceivedMail[]>;
  /** Stop listening (clients then get connection refused), keeping the port for restart(). */
  stop(): Promise<void>;
  /** Listen again on the same port. */
  restart(): Promise<void>;
  close(): Promise<void>;
}

function smtpError(message: string, responseCode: number): Error {
  return Object.assign(new Error(message), { responseCode });
}

/** Start a real SMTP server on 127.0.0.1 (random port) that parses and collects every mail it accepts. */
export async function startSmtpServer(initial: SmtpBehaviour = {}): Promise<TestSmtpServer> {
  const behaviour: SmtpBehaviour = { ...initial };
  const messages: ReceivedMail[] = [];
  const waiters = new Set<() => void>();
  let server: SMTPServer | undefined;
  let port = 0;

  const helper: TestSmtpServer = {
    host: '127.0.0.1',
    port: 0,
    uri(user, pass) {
      const cred = user === undefined ? '' : `${encodeURIComponent(user)}${pass === undefined ? '' : `:${encodeURIComponent(pass)}`}@`;
      return `smtp://${cred}127.0.0.1:${port}`;
    },
    messages,
    rcptAttempts: [],
    authAttempts: [],
    dataStarted: 0,
    set(b) {
      Object.assign(behaviour, b);
    },
    waitForMessages(count, timeoutMs = 10_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (messages.length < count) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(messages);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`expected ${count} mail(s) within ${timeoutMs} ms, got ${messages.length}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    async stop() {
      const s = server;
      server = undefined;
      if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
    },
    async restart() {
      if (server) return;
      await listen(port);
    },
    close() {
      return helper.stop();
    },
  };

  function onAuth(auth: SMTPServerAuthentication, _s: SMTPServerSession, cb: (err: Error | null | undefined, res?: { user: unknown }) => void): void {
    const ok = behaviour.user === undefined
      || (auth.username === behaviour.user && (behaviour.password === undefined || auth.password === behaviour.password));
    helper.authAttempts.push({ username: auth.username, ok });
    if (ok) cb(null, { user: auth.username });
    else cb(smtpError('Authentication credentials invalid', 535));
  }

  function onMailFrom(_a: SMTPServerAddress, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    if (behaviour.user !== undefined && session.user === undefined) cb(smtpError('Authentication required', 530));
    else cb();
  }

  function onRcptTo(address: SMTPServerAddress, _s: SMTPServerSession, cb: (err?: Error | null) => void): void {
    const r = behaviour.rejectRecipients;
    const reject = r === true || (Array.isArray(r) && r.includes(address.address)) || (typeof r === 'function' && r(address.address));
    helper.rcptAttempts.push({ address: address.address, at: Date.now(), accepted: !reject });
    if (reject) cb(smtpError(`Mailbox <${address.address}> unavailable`, behaviour.rejectCode ?? 550));
    else cb();
  }

  function onData(stream: SMTPServerDataStream, session: SMTPServerSession, cb: (err?: Error | null) => void): void {
    helper.dataStarted += 1;
    simpleParser(stream).then(
      (parsed) => {
        const html = parsed.html;
        const mail: ReceivedMail = {
          envelopeFrom: session.envelope.mailFrom ? session.envelope.mailFrom.address : null,
          envelopeTo: session.envelope.rcptTo.map((a) => a.address),
          user: typeof session.user === 'string' ? session.user : undefined,
          subject: parsed.subject ?? '',
          text: parsed.text ?? '',
          html: typeof html === 'string' ? html : '',
          messageId: parsed.messageId,
          receivedAt: Date.now(),
          parsed,
        };
        setTimeout(() => {
          messages.push(mail);
          for (const w of [...waiters]) w();
          cb();
        }, behaviour.acceptDelayMs ?? 0);
      },
      (err: unknown) => cb(err instanceof Error ? err : new Error(String(err))),
    );
  }

  async function listen(onPort: number): Promise<void> {
    const s = new SMTPServer({
      authOptional: true, // enforced in onMailFrom instead, so set({ user }) takes effect at once
      allowInsecureAuth: true,
      disabledCommands: ['STARTTLS'],
      disableReverseLookup: true,
      logger: false,
      closeTimeout: 100,
      onAuth,
      onMailFrom,
      onRcptTo,
      onData,
    });
    s.on('error', () => undefined); // client resets are expected in these tests
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.listen(onPort, '127.0.0.1', () => {
        s.server.off('error', reject);
        resolve();
      });
    });
    port = (s.server.address() as AddressInfo).port;
    helper.port = port;
    server = s;
  }

  await listen(0);
  return helper;
}
