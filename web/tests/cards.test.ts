import { describe, expect, it } from 'vitest';
import { APP_CARD, cardOf, formatFen, MUSIC_CARD, musicCardContent, safeUrl, SHARE_CARD, shareCardContent } from '../src/lib/cards';

describe('cards', () => {
  it('only http(s) URLs survive', () => {
    expect(safeUrl('https://example.com/a?b=1')).toBe('https://example.com/a?b=1');
    expect(safeUrl('javascript:alert(1)')).toBeUndefined();
    expect(safeUrl('JaVaScRiPt:alert(1)')).toBeUndefined();
    expect(safeUrl('data:text/html,<script>')).toBeUndefined();
    expect(safeUrl('mxc://server/media')).toBeUndefined();
    expect(safeUrl(42)).toBeUndefined();
  });

  it('a share card with a script URL falls back to its body text', () => {
    expect(cardOf(SHARE_CARD, { url: 'javascript:alert(1)', title: 'x', body: 'plain' })).toEqual({ kind: 'text', text: 'plain' });
  });

  it('a share card keeps markup in its title as text, drops unsafe images', () => {
    const card = cardOf(SHARE_CARD, { url: 'https://e.com', title: '<b>hi</b>', image_url: 'javascript:x' });
    expect(card).toEqual({ kind: 'share', url: 'https://e.com/', title: '<b>hi</b>', description: undefined, image: undefined });
  });

  it('music and product cards', () => {
    expect(cardOf(MUSIC_CARD, { url: 'https://m.com/s.mp3', title: 'Song', artist: 'A', duration_ms: 61000 })).toMatchObject({ kind: 'music', title: 'Song', durationMs: 61000 });
    expect(cardOf(APP_CARD, { app_id: 'shop', card: { type: 'product', title: 'Tea', price_fen: 12900 } })).toMatchObject({ kind: 'product', app: 'shop', priceFen: 12900 });
    expect(cardOf(APP_CARD, { app_id: 'aa', card: { title: 'Dinner', lines: ['You owe ¥30.00', 7] } })).toMatchObject({ kind: 'app', lines: ['You owe ¥30.00'] });
    expect(cardOf(APP_CARD, { app_id: 'aa', card: 'nope', body: 'fallback' })).toEqual({ kind: 'text', text: 'fallback' });
    expect(cardOf(APP_CARD, { app_id: 'shop', card: { type: 'product', title: 'Tea', price_fen: 1.5 } })).toMatchObject({ priceFen: undefined });
  });

  it('fen are formatted without floating point', () => {
    expect(formatFen(12900)).toBe('¥129.00');
    expect(formatFen(5)).toBe('¥0.05');
    expect(formatFen(123456789)).toBe('¥1,234,567.89');
  });

  it('content to send carries a body fallback', () => {
    expect(shareCardContent('https://e.com/x', ' Title ')).toEqual({ url: 'https://e.com/x', title: 'Title', body: 'Title https://e.com/x' });
    expect(musicCardContent('https://m.com/s', 'Song', 'Teng')).toMatchObject({ artist: 'Teng', body: '♪ Song - Teng https://m.com/s' });
    expect(() => shareCardContent('javascript:alert(1)', 't')).toThrow();
  });
});
