/** Mail: the `email_on_failure` step queues into an outbox; the dispatcher delivers through the SMTP mailer. */
export { createFailureNotifier } from './failure-notifier.js';
export { createEmailDispatcher, emailOutboxStatus, type EmailDispatcher, type EmailOutboxStatus } from './dispatcher.js';
export { createMailer, parseSmtpConnection, MailError, type Mailer, type MailMessage, type SendResult, type SmtpConnection } from './mailer.js';
export { escapeHtml, renderFailureEmail, type FailureEmailInput, type RenderedEmail } from './render.js';
export { queueMail, type MailKey, type MailKind } from './outbox.js';
export { renderNotice, type NoticeInput } from './notices.js';
