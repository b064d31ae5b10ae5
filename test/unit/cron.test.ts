import { describe, expect, it } from 'vitest';
import { cronDates, cronProblem } from '../../src/lib/cron.js';

// croner computes the ticks; a tick belongs to the date it falls on in the workflow's time zone.

describe('cron dates', () => {
  it('puts a tick on the date it falls on in the zone, not in UTC', () => {
    // 03:00 in Tashkent (UTC+5) is 22:00 UTC the day before.
    const tashkent = cronDates('0 3 * * *', 'Asia/Tashkent');
    expect(tashkent.nextDueAt('2024-03-14', null)!.toISOString()).toBe('2024-03-14T22:00:00.000Z');
    expect(tashkent.dueDates('2024-03-13', null, new Date('2024-03-14T22:00:00Z'))).toEqual(['2024-03-14', '2024-03-15']);
    expect(tashkent.dueDates('2024-03-13', null, new Date('2024-03-14T21:59:59Z'))).toEqual(['2024-03-14']);
  });

  it('is DST-correct across the March change in Europe/Berlin', () => {
    // 2024-03-31: clocks jump from 02:00 to 03:00 CET→CEST. A fixed 02:30 tick runs when the clock has jumped (03:00
    // CEST = 01:00 UTC); the days around it keep their local hour at a different UTC offset.
    const gap = cronDates('30 2 * * *', 'Europe/Berlin');
    expect(gap.nextDueAt('2024-03-29', null)!.toISOString()).toBe('2024-03-30T01:30:00.000Z'); // CET, UTC+1
    expect(gap.nextDueAt('2024-03-30', null)!.toISOString()).toBe('2024-03-31T01:00:00.000Z'); // in the gap
    expect(gap.nextDueAt('2024-03-31', null)!.toISOString()).toBe('2024-04-01T00:30:00.000Z'); // CEST, UTC+2
    const daily = cronDates('@daily', 'Europe/Berlin');
    expect(daily.nextDueAt('2024-03-30', null)!.toISOString()).toBe('2024-03-30T23:00:00.000Z');
    expect(daily.nextDueAt('2024-03-31', null)!.toISOString()).toBe('2024-03-31T22:00:00.000Z');
    // Every date across the change is due exactly once.
    expect(gap.dueDates('2024-03-29', null, new Date('2024-04-02T00:00:00Z'))).toEqual(['2024-03-30', '2024-03-31', '2024-04-01']);
  });

  it('runs a repeated hour (October, Berlin) once', () => {
    // 2024-10-27: 03:00 CEST falls back to 02:00 CET, so 02:30 happens twice; a fixed-time job runs at the first.
    const twice = cronDates('30 2 * * *', 'Europe/Berlin');
    expect(twice.nextDueAt('2024-10-26', null)!.toISOString()).toBe('2024-10-27T00:30:00.000Z');
    expect(twice.dueDates('2024-10-26', null, new Date('2024-10-28T12:00:00Z'))).toEqual(['2024-10-27', '2024-10-28']);
  });

  it('counts a date once however many ticks it has, and stops at the end date', () => {
    const everySecond = cronDates('* * * * * *', 'UTC');
    expect(everySecond.dueDates('2024-01-01', null, new Date('2024-01-04T00:00:00Z'))).toEqual(['2024-01-02', '2024-01-03', '2024-01-04']);
    expect(everySecond.dueDates('2024-01-01', '2024-01-02', new Date('2024-01-04T00:00:00Z'))).toEqual(['2024-01-02']);
    expect(everySecond.nextDueAt('2024-01-02', '2024-01-02')).toBeNull();
  });

  it('skips dates without a tick (a weekly schedule)', () => {
    const mondays = cronDates('0 6 * * 1', 'Asia/Tashkent');
    expect(mondays.dueDates('2024-03-01', null, new Date('2024-03-19T00:00:00Z'))).toEqual(['2024-03-04', '2024-03-11', '2024-03-18']);
  });

  it('names what croner refuses', () => {
    expect(cronProblem('@daily')).toBeNull();
    expect(cronProblem('0 3 * *')).toMatch(/five, six, or seven/);
    expect(cronProblem('61 * * * *')).toMatch(/minute/);
    expect(() => cronDates('nonsense', 'UTC')).toThrow(RangeError);
  });
});
