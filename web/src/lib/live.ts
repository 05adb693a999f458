// When to reload a Laiwang extension screen (friends, zhadui). Those APIs have no push channel, so
// the screen reloads when something suggests a change, and polls only as a fallback that slows
// down while nothing changes:
//  - our own action (reload() after it),
//  - a /sync that brought a membership change or a new room (someone joined a zhadui discussion,
//    a new friend opened a chat), debounced,
//  - the page becoming visible again or the network coming back,
//  - the fallback: `fastMs` after a change, doubling up to `slowMs` while answers stay the same.
import { useEffect, useRef, useState } from 'preact/hooks';

/** The fallback poll's next delay: fast again after a change, doubling while nothing changes. */
export class Backoff {
  private delay: number;
  constructor(
    readonly fastMs: number,
    readonly slowMs: number,
  ) {
    this.delay = fastMs;
  }
  next(changed: boolean): number {
    this.delay = changed ? this.fastMs : Math.min(this.slowMs, this.delay * 2);
    return this.delay;
  }
}

/** Runs `task` at most once at a time; calls while it runs fold into one more run afterwards. */
export function coalesced(task: () => Promise<void>): () => Promise<void> {
  let running: Promise<void> | null = null;
  let again = false;
  const start = (): Promise<void> => {
    running = (async () => {
      try {
        do {
          again = false;
          await task();
        } while (again);
      } finally {
        running = null;
      }
    })();
    return running;
  };
  return () => {
    if (running) {
      again = true;
      return running;
    }
    return start();
  };
}

export interface Wakeable {
  on(event: string, listener: () => void): unknown;
  off(event: string, listener: () => void): unknown;
}

export interface LiveOptions {
  /** Emitter whose `events` mean "the answer may have changed" (the matrix-js-sdk client). */
  wake?: Wakeable;
  events?: readonly string[];
  fastMs?: number;
  slowMs?: number;
}

/** The latest answer of `load()`, its error, and `reload()`; see the header for when it reloads.
 * `load` must return plain data (it is compared as JSON to tell a change). */
export function useLive<T>(load: () => Promise<T>, options: LiveOptions = {}): [T | null, unknown, () => Promise<void>] {
  const { wake, events = [], fastMs = 3000, slowMs = 20_000 } = options;
  const [value, setValue] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const last = useRef<string | null>(null);
  const loadRef = useRef(load);
  loadRef.current = load;
  const backoff = useRef(new Backoff(fastMs, slowMs));
  const timer = useRef(0);
  const alive = useRef(true);

  const [reload] = useState(() => {
    const once = async () => {
      let changed = false;
      try {
        const answer = await loadRef.current();
        const print = JSON.stringify(answer);
        changed = last.current !== null && print !== last.current;
        if (alive.current && print !== last.current) setValue(answer);
        last.current = print;
        if (alive.current) setError(null);
      } catch (e) {
        if (alive.current) setError(e);
      }
      if (!alive.current) return;
      window.clearTimeout(timer.current);
      timer.current = window.setTimeout(() => {
        if (document.visibilityState === 'visible') void reload();
        else backoff.current.next(false); // hidden: wait for visibilitychange instead
      }, backoff.current.next(changed));
    };
    const reload = coalesced(once);
    return reload;
  });

  useEffect(() => {
    alive.current = true;
    void reload();
    let debounce = 0;
    const soon = () => {
      window.clearTimeout(debounce);
      debounce = window.setTimeout(() => void reload(), 300);
    };
    const onVisible = () => {
      if (document.visibilityState === 'visible') soon();
    };
    document.addEventListener('visibilitychange', onVisible);
    window.addEventListener('online', soon);
    window.addEventListener('focus', soon);
    for (const event of events) wake?.on(event, soon);
    return () => {
      alive.current = false;
      window.clearTimeout(timer.current);
      window.clearTimeout(debounce);
      document.removeEventListener('visibilitychange', onVisible);
      window.removeEventListener('online', soon);
      window.removeEventListener('focus', soon);
      for (const event of events) wake?.off(event, soon);
    };
  }, [wake, events.join(',')]);

  return [value, error, reload];
}
