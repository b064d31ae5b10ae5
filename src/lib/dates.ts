/** Calendar dates as YYYY-MM-DD strings; arithmetic in UTC so no local time zone can shift a day. */

const ISO_DATE = /^(\d{4})-(\d{2})-(\d{2})$/;

/** True when `s` is a real calendar date written YYYY-MM-DD. */
export function isIsoDate(s: string): boolean {
  const m = ISO_DATE.exec(s);
  if (!m) return false;
  const d = new Date(Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3])));
  return d.toISOString().slice(0, 10) === s;
}

/** `date` plus `days` (negative to go back). */
export function addDays(date: string, days: number): string {
  if (!isIsoDate(date)) throw new RangeError(`"${date}" is not a date in the form YYYY-MM-DD`);
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + days);
  return d.toISOString().slice(0, 10);
}

const ZONE_DATE = new Map<string, Intl.DateTimeFormat>();

/** The calendar date of `at` in the IANA time zone `timeZone`. */
export function dateInZone(timeZone: string, at: Date = new Date()): string {
  // en-CA formats as YYYY-MM-DD. Building a formatter costs far more than formatting: one per zone, kept.
  let f = ZONE_DATE.get(timeZone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-CA', { timeZone, year: 'numeric', month: '2-digit', day: '2-digit' });
    ZONE_DATE.set(timeZone, f);
  }
  return f.format(at);
}

/** True when `tz` is an IANA time zone the runtime knows, e.g. Asia/Tashkent or UTC. */
export function isTimeZone(tz: string): boolean {
  try {
    new Intl.DateTimeFormat('en-US', { timeZone: tz });
    return true;
  } catch {
    return false;
  }
}

const TIME_OF_DAY = /^([01]\d|2[0-3]):([0-5]\d)(?::([0-5]\d))?$/;

/** True when `s` is a time of day written HH:MM or HH:MM:SS (24-hour clock). */
export function isTimeOfDay(s: string): boolean {
  return TIME_OF_DAY.test(s);
}

/** Milliseconds `timeZone` is ahead of UTC at the instant `at` (epoch ms). */
function zoneOffsetMs(timeZone: string, at: number): number {
  const parts = new Intl.DateTimeFormat('en-US', {
    timeZone, hourCycle: 'h23', year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).formatToParts(new Date(at));
  const n = (type: string) => Number(parts.find((p) => p.type === type)?.value);
  return Date.UTC(n('year'), n('month') - 1, n('day'), n('hour'), n('minute'), n('second')) - Math.floor(at / 1000) * 1000;
}

/**
 * The instant (epoch ms) of wall-clock `time` (HH:MM[:SS]) on calendar `date` in `timeZone`. DST-correct: the offset
 * is taken at the result itself; a wall time skipped by a spring-forward gap lands just after the gap.
 */
export function zonedInstant(date: string, time: string, timeZone: string): number {
  const m = TIME_OF_DAY.exec(time);
  if (!isIsoDate(date) || !m) throw new RangeError(`"${date} ${time}" is not a date YYYY-MM-DD and a time HH:MM[:SS]`);
  const [y, mo, d] = date.split('-').map(Number) as [number, number, number];
  const wall = Date.UTC(y, mo - 1, d, Number(m[1]), Number(m[2]), Number(m[3] ?? 0));
  const first = wall - zoneOffsetMs(timeZone, wall);
  const second = wall - zoneOffsetMs(timeZone, first);
  return second === first ? first : Math.max(first, second);
}

/** `at` as "YYYY-MM-DD HH:MM:SS" wall-clock time in `timeZone`, as operators read times in mails and status. */
export function formatInZone(at: Date | number, timeZone: string): string {
  return new Intl.DateTimeFormat('sv-SE', {
    timeZone, year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit', second: '2-digit',
  }).format(new Date(at));
}
