/** SAP: the readiness POST of `send_flg_to_sap`, its connection URI, payload and the record of every send. */
export { createSapSender, type SapSenderDeps, type SapSendResult, type SapTry } from './sender.js';
export { describeSapEndpoint, parseSapConnection, type SapAuth, type SapEndpoint } from './connection.js';
export { sapIdempotencyKey, sapPayloadJson, type SapPayload } from './payload.js';
