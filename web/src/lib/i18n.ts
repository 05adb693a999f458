// Chinese or English, chosen from the browser's preferred languages (first match wins).
import { en } from './strings-en';
import { zh } from './strings-zh';

export type Key = keyof typeof en;
export type Lang = 'en' | 'zh';
const tables: Record<Lang, Record<Key, string>> = { en, zh };

export function pickLanguage(preferred: readonly string[]): Lang {
  for (const tag of preferred) {
    const base = tag.toLowerCase().split('-')[0];
    if (base === 'zh') return 'zh';
    if (base === 'en') return 'en';
  }
  return 'en';
}

let current: Lang = typeof navigator === 'undefined' ? 'en' : pickLanguage(navigator.languages ?? [navigator.language]);

export function setLanguage(lang: Lang): void {
  current = lang;
}

export function language(): Lang {
  return current;
}

/** The text for `key` with `{name}` placeholders filled in (values are text, rendered escaped by Preact). */
export function t(key: Key, values: Record<string, string | number> = {}, lang: Lang = current): string {
  const template = tables[lang][key] ?? en[key];
  return template.replace(/\{(\w+)\}/g, (_, name: string) => String(values[name] ?? `{${name}}`));
}
