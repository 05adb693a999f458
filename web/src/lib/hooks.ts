import { useEffect, useReducer } from 'preact/hooks';

interface Emitter {
  on(event: string, listener: (...args: never[]) => void): unknown;
  off(event: string, listener: (...args: never[]) => void): unknown;
}

/** Re-render whenever `emitter` emits one of `events` (matrix-js-sdk's clients and rooms are emitters). */
export function useEvents(emitter: Emitter | null | undefined, events: readonly string[]): number {
  const [version, bump] = useReducer((n: number) => n + 1, 0);
  useEffect(() => {
    if (!emitter) return;
    const listener = () => bump(undefined as never);
    for (const event of events) emitter.on(event, listener);
    return () => {
      for (const event of events) emitter.off(event, listener);
    };
  }, [emitter, events.join(',')]);
  return version;
}

/** The current location hash as a route, updated on navigation. */
export function useHashRoute(): string[] {
  const [, bump] = useReducer((n: number) => n + 1, 0);
  useEffect(() => {
    const listener = () => bump(undefined as never);
    window.addEventListener('hashchange', listener);
    return () => window.removeEventListener('hashchange', listener);
  }, []);
  return parseRoute(window.location.hash);
}

export function parseRoute(hash: string): string[] {
  return hash
    .replace(/^#\/?/, '')
    .split('/')
    .filter(Boolean)
    .map((part) => decodeURIComponent(part));
}

export function go(...parts: string[]): void {
  window.location.hash = `#/${parts.map(encodeURIComponent).join('/')}`;
}
