import { describe, expect, it } from 'vitest';
import { describeError } from '../src/lib/errors';
import { loginIdentifier } from '../src/lib/account';
import { parseRoute } from '../src/lib/hooks';
import { pickLanguage, setLanguage, t } from '../src/lib/i18n';
import { editContent, latestEdits, localpart, previewOf, readersUpTo, socialProof, typingText, unreadBadge, webhookSummary } from '../src/lib/present';
import { ApiError } from '../src/lib/errors';

describe('language', () => {
  it('comes from the browser preferences', () => {
    expect(pickLanguage(['zh-CN', 'en'])).toBe('zh');
    expect(pickLanguage(['fr-FR', 'en-GB'])).toBe('en');
    expect(pickLanguage(['de'])).toBe('en');
    expect(t('typing', { names: 'Li' }, 'zh')).toBe('Li 正在输入…');
  });
});

describe('presentation', () => {
  it('typing, social proof, previews, badges', () => {
    setLanguage('en');
    expect(typingText([])).toBe('');
    expect(typingText(['bob'])).toBe('bob is typing…');
    expect(typingText(['a', 'b'])).toBe('a, b are typing…');
    expect(socialProof(['bob'])).toBe('bob is in it');
    expect(socialProof(['a', 'b', 'c'])).toBe('3 friends are in it');
    expect(previewOf('m.room.message', { msgtype: 'm.text', body: 'hi' }, false)).toBe('hi');
    expect(previewOf('m.room.message', { body: 'hi' }, true)).toBe('Message deleted');
    expect(previewOf('cn.laiwang.share_card', { url: 'https://e.com', title: 'Doc' }, false)).toBe('[Doc]');
    expect(unreadBadge(150)).toBe('99+');
    expect(localpart('@alice:server')).toBe('alice');
  });

  it('edits: newest by the original sender wins, others are ignored', () => {
    const events = [
      { id: '$1', sender: '@a', type: 'm.room.message', content: { body: 'one' } },
      { id: '$2', sender: '@a', type: 'm.room.message', content: editContent('$1', 'two') },
      { id: '$3', sender: '@mallory', type: 'm.room.message', content: editContent('$1', 'evil') },
      { id: '$4', sender: '@a', type: 'm.room.message', content: editContent('$1', 'three') },
    ];
    expect(latestEdits(events).get('$1')).toEqual({ msgtype: 'm.text', body: 'three' });
  });

  it('receipts at or after an event count as read', () => {
    const order = ['$1', '$2', '$3'];
    const receipts = new Map([['@b', '$3'], ['@c', '$1'], ['@d', '$unknown']]);
    expect(readersUpTo(order, '$2', receipts)).toEqual(['@b']);
    expect(readersUpTo(order, '$9', receipts)).toEqual([]);
  });

  it('errors in words, never JSON', () => {
    setLanguage('en');
    expect(describeError(new ApiError('M_LIMIT_EXCEEDED', 429, 2500))).toBe('Too many tries. Please wait 3 s.');
    expect(describeError({ errcode: 'M_FORBIDDEN' }, 'login')).toBe('Wrong user name or password.');
    expect(describeError({ data: { errcode: 'M_USER_IN_USE' } })).toBe('That user name is taken.');
    expect(describeError(new ApiError('M_WEIRD', 400))).toBe('Something went wrong (M_WEIRD). Please try again.');
    expect(describeError(new TypeError('Failed to fetch'))).toContain('cannot be reached');
  });

  it('login identifiers and routes', () => {
    expect(loginIdentifier('+86 138 0013 8000')).toEqual({ type: 'm.id.phone', country: 'CN', phone: '13800138000' });
    expect(loginIdentifier('alice')).toEqual({ type: 'm.id.user', user: 'alice' });
    expect(parseRoute('#/chats/%21room%3Aserver')).toEqual(['chats', '!room:server']);
  });
});

describe('webhook health', () => {
  it('says whether an endpoint delivers, fails or is paused', () => {
    setLanguage('en');
    expect(webhookSummary({ paused: false, consecutive_failures: 0 })).toBe('Webhook: delivering');
    expect(webhookSummary({ paused: false, consecutive_failures: 2, last_error: 'HTTP 500' })).toBe('Webhook: 2 failed tries in a row (last: HTTP 500)');
    expect(webhookSummary({ paused: true, consecutive_failures: 20, last_error: 'HTTP 503' })).toMatch(/^Webhook paused after 20 failed tries in a row \(last: HTTP 503\)/);
    setLanguage('zh');
    expect(webhookSummary({ paused: true, consecutive_failures: 20 })).toMatch(/^Webhook 已暂停/);
    setLanguage('en');
  });
});
