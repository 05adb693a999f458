// Cards are room events with a typed payload and a plain `body` fallback. Everything here turns an
// event's content into a display model of plain strings; the components render those as text
// (escaped by Preact), and only http(s) URLs ever reach an href or src, so no card can run script.

export const SHARE_CARD = 'cn.laiwang.share_card';
export const MUSIC_CARD = 'cn.laiwang.music_card';
export const APP_CARD = 'cn.laiwang.app_card';
export const CARD_TYPES = new Set([SHARE_CARD, MUSIC_CARD, APP_CARD]);

export type Card =
  | { kind: 'share'; url: string; title: string; description?: string; image?: string }
  | { kind: 'music'; url: string; title: string; artist?: string; cover?: string; durationMs?: number }
  | { kind: 'product'; app: string; title: string; priceFen?: number; url?: string; image?: string; description?: string }
  | { kind: 'app'; app: string; title: string; lines: string[]; url?: string }
  | { kind: 'text'; text: string };

type Content = Record<string, unknown>;

/** An http(s) URL in canonical form, or undefined (javascript:, data:, mxc: and garbage are refused). */
export function safeUrl(value: unknown): string | undefined {
  if (typeof value !== 'string' || value.length > 2048) return undefined;
  try {
    const url = new URL(value);
    return url.protocol === 'https:' || url.protocol === 'http:' ? url.href : undefined;
  } catch {
    return undefined;
  }
}

function str(value: unknown, max = 2048): string | undefined {
  return typeof value === 'string' && value.trim() !== '' ? value.slice(0, max) : undefined;
}

function int(value: unknown): number | undefined {
  return typeof value === 'number' && Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

function fallback(content: Content): Card {
  return { kind: 'text', text: str(content.body, 4000) ?? '' };
}

/** The card an event of `type` with `content` shows; a malformed card falls back to its body text. */
export function cardOf(type: string, content: Content): Card {
  if (type === SHARE_CARD) {
    const url = safeUrl(content.url);
    const title = str(content.title, 256);
    if (!url || !title) return fallback(content);
    return { kind: 'share', url, title, description: str(content.description), image: safeUrl(content.image_url) };
  }
  if (type === MUSIC_CARD) {
    const url = safeUrl(content.url);
    const title = str(content.title, 256);
    if (!url || !title) return fallback(content);
    return {
      kind: 'music',
      url,
      title,
      artist: str(content.artist, 256),
      cover: safeUrl(content.cover_url),
      durationMs: int(content.duration_ms),
    };
  }
  if (type === APP_CARD) {
    const app = str(content.app_id, 128);
    const card = content.card;
    if (!app || typeof card !== 'object' || card === null || Array.isArray(card)) return fallback(content);
    const c = card as Content;
    const title = str(c.title, 256) ?? str(content.body, 256);
    if (!title) return fallback(content);
    if (c.type === 'product' || c.kind === 'product') {
      return {
        kind: 'product',
        app,
        title,
        priceFen: int(c.price_fen),
        url: safeUrl(c.url),
        image: safeUrl(c.image_url),
        description: str(c.description),
      };
    }
    const lines = Array.isArray(c.lines) ? c.lines.flatMap((l) => (typeof l === 'string' ? [l.slice(0, 256)] : [])) : [];
    return { kind: 'app', app, title, lines: lines.slice(0, 10), url: safeUrl(c.url) };
  }
  return fallback(content);
}

/** Fen (integer hundredths of a yuan) as "¥12.30"; integers only, no floating-point rounding. */
export function formatFen(fen: number): string {
  const yuan = Math.floor(fen / 100);
  const rest = String(fen % 100).padStart(2, '0');
  return `¥${yuan.toLocaleString('en-US')}.${rest}`;
}

export function formatDuration(ms: number): string {
  const seconds = Math.round(ms / 1000);
  return `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, '0')}`;
}

/** The content to send for a shared link, with the body fallback other Matrix clients show. */
export function shareCardContent(url: string, title: string, description?: string): Content {
  const safe = safeUrl(url);
  if (!safe) throw new Error('not an http(s) URL');
  const content: Content = { url: safe, title: title.trim(), body: `${title.trim()} ${safe}` };
  if (description?.trim()) content.description = description.trim();
  return content;
}

export function musicCardContent(url: string, title: string, artist?: string): Content {
  const safe = safeUrl(url);
  if (!safe) throw new Error('not an http(s) URL');
  const who = artist?.trim();
  const content: Content = { url: safe, title: title.trim(), body: `♪ ${title.trim()}${who ? ` - ${who}` : ''} ${safe}` };
  if (who) content.artist = who;
  return content;
}
