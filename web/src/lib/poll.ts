import { useEffect, useState } from 'preact/hooks';

/** Loads `load()` now, again every `everyMs` while the page is visible, and when `reload()` is called.
 * The extension APIs have no push channel yet, so friends and feeds refresh this way. */
export function usePolled<T>(load: () => Promise<T>, everyMs: number): [T | null, unknown, () => Promise<void>] {
  const [value, setValue] = useState<T | null>(null);
  const [error, setError] = useState<unknown>(null);
  const reload = async () => {
    try {
      setValue(await load());
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  useEffect(() => {
    void reload();
    const timer = window.setInterval(() => {
      if (document.visibilityState === 'visible') void reload();
    }, everyMs);
    return () => window.clearInterval(timer);
  }, []);
  return [value, error, reload];
}
