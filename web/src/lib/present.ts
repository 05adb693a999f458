// Small pieces of presentation logic, kept free of the SDK and the DOM so Vitest covers them.
import { CARD_TYPES, cardOf } from './cards';
import { t } from './i18n';

export function typingText(names: string[]): string {
  if (names.length === 0) return '';
  if (names.length === 1) return t('typing', { names: names[0] });
  return t('typingMany', { names: names.slice(0, 3).join(', ') });
}

export function socialProof(friendNames: string[]): string {
  if (friendNames.length === 0) return '';
  if (friendNames.length === 1) return t('friendsInIt', { names: friendNames[0] });
  return t('friendsInItMany', { count: friendNames.length });
}

/** One line for the conversation list: what the newest visible event says. */
export function previewOf(type: string, content: Record<string, unknown>, redacted: boolean): string {
  if (redacted) return t('deleted');
  if (CARD_TYPES.has(type)) {
    const card = cardOf(type, content);
    return card.kind === 'text' ? card.text : `[${card.title}]`;
  }
  if (type === 'm.room.message') {
    if (content.msgtype === 'm.image') return `[${t('picture')}]`;
    const body = typeof content.body === 'string' ? content.body : '';
    return body.slice(0, 140);
  }
  return '';
}

/** A localpart for display when no display name is known: "@alice:server" -> "alice". */
export function localpart(userId: string): string {
  const match = /^@([^:]+)/.exec(userId);
  return match ? match[1] : userId;
}

export function unreadBadge(count: number): string {
  return count > 99 ? '99+' : String(count);
}

/** The Matrix content of an edit: the new text, with the "* " fallback other clients show. */
export function editContent(eventId: string, text: string): Record<string, unknown> {
  return {
    msgtype: 'm.text',
    body: `* ${text}`,
    'm.new_content': { msgtype: 'm.text', body: text },
    'm.relates_to': { rel_type: 'm.replace', event_id: eventId },
  };
}

export function formatTime(ts: number, now: number = Date.now()): string {
  const d = new Date(ts);
  const sameDay = new Date(now).toDateString() === d.toDateString();
  const pad = (n: number) => String(n).padStart(2, '0');
  const hm = `${pad(d.getHours())}:${pad(d.getMinutes())}`;
  return sameDay ? hm : `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${hm}`;
}

export interface PlainEvent {
  id: string;
  sender: string;
  type: string;
  content: Record<string, unknown>;
}

/** For each edited event, its newest replacement content: only edits by the original sender count
 * (as the spec requires), later ones win. */
export function latestEdits(events: readonly PlainEvent[]): Map<string, Record<string, unknown>> {
  const senders = new Map(events.map((e) => [e.id, e.sender]));
  const edits = new Map<string, Record<string, unknown>>();
  for (const event of events) {
    const relation = event.content['m.relates_to'] as { rel_type?: unknown; event_id?: unknown } | undefined;
    const replacement = event.content['m.new_content'];
    if (relation?.rel_type !== 'm.replace' || typeof relation.event_id !== 'string') continue;
    if (typeof replacement !== 'object' || replacement === null) continue;
    if (senders.get(relation.event_id) !== event.sender) continue;
    edits.set(relation.event_id, replacement as Record<string, unknown>);
  }
  return edits;
}

export function isEdit(content: Record<string, unknown>): boolean {
  const relation = content['m.relates_to'] as { rel_type?: unknown } | undefined;
  return relation?.rel_type === 'm.replace';
}

/** Who has read up to `eventId`: a reader's receipt at that event or any later one in `order`. */
export function readersUpTo(order: readonly string[], eventId: string, receipts: ReadonlyMap<string, string>): string[] {
  const target = order.indexOf(eventId);
  if (target < 0) return [];
  return [...receipts].filter(([, readAt]) => order.indexOf(readAt) >= target).map(([userId]) => userId);
}

export interface WebhookHealthView {
  paused: boolean;
  consecutive_failures: number;
  last_error?: string;
}

/** One line on an app's webhook endpoint: delivering, failing (and how), or paused. */
export function webhookSummary(health: WebhookHealthView): string {
  if (health.paused) return t('webhookPaused', { n: health.consecutive_failures, error: health.last_error || '?' });
  if (health.consecutive_failures > 0) return t('webhookFailing', { n: health.consecutive_failures, error: health.last_error || '?' });
  return t('webhookHealthy');
}
