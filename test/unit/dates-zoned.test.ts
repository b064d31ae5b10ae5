import { describe, expect, it } from 'vitest';
import { formatInZone, isTimeOfDay, isTimeZone, zonedInstant } from '../../src/lib/dates.js';

describe('zonedInstant: a time of day on a calendar date in a time zone', () => {
  it('Asia/Tashkent is UTC+5 all year', () => {
    expect(new Date(zonedInstant('2024-03-15', '07:30', 'Asia/Tashkent')).toISOString()).toBe('2024-03-15T02:30:00.000Z');
    expect(new Date(zonedInstant('2024-03-15', '00:00:05', 'Asia/Tashkent')).toISOString()).toBe('2024-03-14T19:00:05.000Z');
  });
  it('follows daylight saving time on both sides of the change', () => {
    expect(new Date(zonedInstant('2024-03-09', '07:30', 'America/New_York')).toISOString()).toBe('2024-03-09T12:30:00.000Z');
    expect(new Date(zonedInstant('2024-03-11', '07:30', 'America/New_York')).toISOString()).toBe('2024-03-11T11:30:00.000Z');
    expect(new Date(zonedInstant('2024-10-27', '07:30', 'Europe/Berlin')).toISOString()).toBe('2024-10-27T06:30:00.000Z');
    // 02:30 does not exist on 2024-03-10 in New York: the deadline lands after the gap, never before it.
    expect(zonedInstant('2024-03-10', '02:30', 'America/New_York')).toBeGreaterThanOrEqual(Date.parse('2024-03-10T07:00:00Z'));
  });
  it('formats back in the zone, and checks the HH:MM[:SS] form', () => {
    expect(formatInZone(Date.parse('2024-03-15T02:30:00Z'), 'Asia/Tashkent')).toBe('2024-03-15 07:30:00');
    expect(['07:30', '23:59:59', '00:00'].every(isTimeOfDay)).toBe(true);
    expect(['7:30', '24:00', '07:60', '07:30:60', '0730'].some(isTimeOfDay)).toBe(false);
  });
});

describe('isTimeZone: an IANA zone name the runtime knows', () => {
  it('knows IANA zones and refuses other names, every time it is asked', () => {
    for (let i = 0; i < 3; i++) {
      expect(['Asia/Tashkent', 'UTC', 'Europe/Berlin'].every(isTimeZone)).toBe(true);
      expect(['Asia/Tashkentt', 'Mars/Olympus', '', 'UTC+5:00:00x'].some(isTimeZone)).toBe(false);
    }
  });
});
