import { describe, expect, it } from 'vitest';
import { Backoff, coalesced } from '../src/lib/live';

describe('fallback poll', () => {
  it('doubles while nothing changes, up to the slow bound, and is fast again after a change', () => {
    const b = new Backoff(3000, 20_000);
    expect([false, false, false, false].map((c) => b.next(c))).toEqual([6000, 12_000, 20_000, 20_000]);
    expect(b.next(true)).toBe(3000);
    expect(b.next(false)).toBe(6000);
  });
});

describe('coalesced reloads', () => {
  it('runs one at a time; calls during a run fold into exactly one more run', async () => {
    let runs = 0;
    let release: () => void = () => undefined;
    const task = coalesced(async () => {
      runs += 1;
      if (runs === 1) await new Promise<void>((r) => (release = r));
    });
    const first = task();
    const second = task();
    const third = task();
    expect(runs).toBe(1);
    release();
    await Promise.all([first, second, third]);
    expect(runs).toBe(2);
    await task();
    expect(runs).toBe(3);
  });
});
