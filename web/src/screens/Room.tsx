import {
  ClientEvent,
  EventTimeline,
  KnownMembership,
  type MatrixEvent,
  type Room,
  RoomEvent,
  RoomMemberEvent,
} from 'matrix-js-sdk';
import { useEffect, useLayoutEffect, useRef, useState } from 'preact/hooks';
import type { Ctx } from '../App';
import { CardView } from '../components/CardView';
import { Picture } from '../components/Picture';
import { VirtualList } from '../components/VirtualList';
import { ErrorText, useAction } from '../components/ui';
import { Words } from '../lib/errors';
import { CARD_TYPES, MUSIC_CARD, musicCardContent, SHARE_CARD, shareCardContent } from '../lib/cards';
import { go, useEvents } from '../lib/hooks';
import { imageContent, isPicture } from '../lib/media';
import { roomName } from '../lib/rooms';
import { t } from '../lib/i18n';
import { editContent, formatTime, isEdit, latestEdits, localpart, readersUpTo, typingText } from '../lib/present';

const ROOM_EVENTS = [
  RoomEvent.Timeline,
  RoomEvent.Redaction,
  RoomEvent.Receipt,
  RoomEvent.LocalEchoUpdated,
  RoomEvent.MyMembership,
  RoomEvent.Name,
  RoomEvent.TimelineReset,
] as const;
/** The first timeline row: the scrollback control. */
const HEAD = '__head';
type Row = MatrixEvent | typeof HEAD;

const CLIENT_EVENTS = [ClientEvent.Room, RoomMemberEvent.Typing] as const;

/** A member's display name, or their localpart when they set none (never the full @id:server). */
function displayName(room: Room, userId: string): string {
  const name = room.getMember(userId)?.rawDisplayName;
  return name && name !== userId ? name : localpart(userId);
}

function shown(e: MatrixEvent): boolean {
  const type = e.getType();
  if (type === 'm.room.message') return !isEdit(e.getContent()) || e.isRedacted();
  return CARD_TYPES.has(type);
}

export function RoomView({ ctx, roomId }: { ctx: Ctx; roomId: string }) {
  const { client } = ctx;
  useEvents(client, CLIENT_EVENTS);
  const room = client.getRoom(roomId);
  if (!room) {
    return (
      <p class="loading pad" role="status">
        {t('loading')}
      </p>
    );
  }
  return <Conversation ctx={ctx} room={room} />;
}

function Conversation({ ctx, room }: { ctx: Ctx; room: Room }) {
  const { client, session } = ctx;
  useEvents(room, ROOM_EVENTS);
  const me = session.userId;
  const membership = room.getMyMembership();
  const all = room.getLiveTimeline().getEvents();
  const edits = latestEdits(
    all.map((e) => ({ id: e.getId() ?? '', sender: e.getSender() ?? '', type: e.getType(), content: e.getContent() })),
  );
  const events = all.filter(shown);
  // Read from the live timeline at every render: a limited /sync replaces it with a newer one
  // that has older events to fetch again.
  const atStart = room.getLiveTimeline().getPaginationToken(EventTimeline.BACKWARDS) === null;
  const [editing, setEditing] = useState<MatrixEvent | null>(null);
  const [busy, error, run] = useAction();

  // Read receipt for the newest event from someone else, while the conversation is on screen.
  const newest = [...all].reverse().find((e) => e.getSender() !== me && !e.isSending() && e.getId()?.startsWith('$'));
  // Not room.hasUserReadEvent: the SDK counts our own later events (our join) as an implicit read,
  // and the sender would then never see a receipt. Explicit receipts only move forward on the server.
  const receipted = useRef('');
  useEffect(() => {
    const id = newest?.getId();
    if (!newest || !id || membership !== KnownMembership.Join || receipted.current === id) return;
    if (room.getReadReceiptForUserId(me, true)?.eventId === id) return;
    receipted.current = id;
    void client.sendReadReceipt(newest).catch(() => {
      receipted.current = '';
    });
  }, [newest?.getId(), membership]);

  const typers = room
    .getMembers()
    .filter((m) => m.typing && m.userId !== me)
    .map((m) => displayName(room, m.userId));

  const mine = events.filter((e) => e.getSender() === me && !e.isRedacted());
  const lastMine = mine[mine.length - 1];
  const receipts = new Map<string, string>();
  for (const member of room.getJoinedMembers()) {
    const readAt = member.userId !== me ? room.getReadReceiptForUserId(member.userId, true)?.eventId : undefined;
    if (readAt) receipts.set(member.userId, readAt);
  }
  const readers = lastMine
    ? readersUpTo(
        all.map((e) => e.getId() ?? ''),
        lastMine.getId() ?? '',
        receipts,
      ).map((u) => displayName(room, u))
    : [];

  // Pages loaded so far: with the timeline length, the list asks for the next page when one lands
  // while the reader is still at the top (the events arrive before the load has ended, so the
  // length alone would ask while this load still runs). A failed load changes neither: no retry loop.
  const [pages, setPages] = useState(0);
  const paging = useRef(false);
  const loadEarlier = () => {
    if (paging.current || atStart) return;
    paging.current = true;
    void run(async () => {
      try {
        await client.scrollback(room, 30);
        setPages((n) => n + 1);
      } finally {
        paging.current = false;
      }
    });
  };

  if (membership === KnownMembership.Invite) {
    return (
      <div class="conversation">
        <RoomHead room={room} />
        <div class="invite pad">
          <p>
            {t('invited')}: {room.name}
          </p>
          <ErrorText error={error} />
          <div class="row">
            <button class="primary" disabled={busy} onClick={() => run(async () => void (await client.joinRoom(room.roomId)))}>
              {t('join')}
            </button>
            <button
              disabled={busy}
              onClick={() =>
                run(async () => {
                  await client.leave(room.roomId);
                  go('chats');
                })
              }
            >
              {t('decline')}
            </button>
          </div>
        </div>
      </div>
    );
  }

  return (
    <div class="conversation">
      <RoomHead room={room} />
      <VirtualList<Row>
        chat
        class="timeline"
        label={roomName(room)}
        items={[HEAD, ...events]}
        keyOf={(row) => (row === HEAD ? HEAD : (row.getId() ?? row.getTxnId() ?? ''))}
        estimate={72}
        onNearStart={loadEarlier}
        startKey={`${all.length}/${pages}`}
        render={(row) =>
          row === HEAD ? (
            <div class="timeline-start">
              {atStart ? (
                <p class="muted">{t('noEarlier')}</p>
              ) : (
                <button class="small" onClick={loadEarlier} disabled={busy}>
                  {t('loadEarlier')}
                </button>
              )}
            </div>
          ) : (
            <EventRow
              event={row}
              own={row.getSender() === me}
              name={displayName(room, row.getSender() ?? '')}
              replacement={edits.get(row.getId() ?? '')}
              readers={row === lastMine ? readers : []}
              onEdit={() => setEditing(row)}
              onDelete={() => run(async () => void (await client.redactEvent(room.roomId, row.getId() ?? '')))}
              token={session.accessToken}
            />
          )
        }
      />
      <p class="typing" aria-live="polite" data-testid="typing">
        {typingText(typers)}
      </p>
      <ErrorText error={error} />
      <Composer ctx={ctx} room={room} editing={editing} edits={edits} onDone={() => setEditing(null)} />
    </div>
  );
}

function RoomHead({ room }: { room: Room }) {
  return (
    <header class="pane-head room-head">
      <a href="#/chats" class="back" aria-label={t('back')}>
        ‹
      </a>
      <h1>{roomName(room)}</h1>
      <span class="muted">{t('participants', { count: room.getJoinedMemberCount() })}</span>
    </header>
  );
}

interface RowProps {
  event: MatrixEvent;
  own: boolean;
  name: string;
  replacement?: Record<string, unknown>;
  readers: string[];
  onEdit: () => void;
  onDelete: () => void;
  token: string;
}

function EventRow({ event, own, name, replacement, readers, onEdit, onDelete, token }: RowProps) {
  const redacted = event.isRedacted();
  const type = event.getType();
  const content = replacement ?? event.getContent();
  const editable = own && !redacted && type === 'm.room.message' && content.msgtype === 'm.text' && !event.isSending();
  return (
    <div class={`event ${own ? 'own' : ''} ${redacted ? 'redacted' : ''}`} data-event-id={event.getId()}>
      {!own && <span class="sender">{name}</span>}
      <div class="bubble">
        {redacted ? (
          <em class="muted">{t('deleted')}</em>
        ) : type === 'm.room.message' && content.msgtype === 'm.image' ? (
          <Picture baseUrl={window.location.origin} token={token} content={content} />
        ) : type === 'm.room.message' ? (
          <span class="text">{String(content.body ?? '')}</span>
        ) : (
          <CardView type={type} content={content} />
        )}
        {replacement && !redacted && <span class="muted edited"> {t('edited')}</span>}
      </div>
      <div class="meta">
        <time dateTime={new Date(event.getTs()).toISOString()}>{formatTime(event.getTs())}</time>
        {own && !redacted && !event.isSending() && (
          <span class="actions">
            {editable && (
              <button class="link" onClick={onEdit} aria-label={`${t('edit')}: ${String(content.body ?? '')}`}>
                {t('edit')}
              </button>
            )}
            <button class="link" onClick={onDelete} aria-label={`${t('delete')}: ${String(content.body ?? '')}`}>
              {t('delete')}
            </button>
          </span>
        )}
      </div>
      {readers.length > 0 && (
        <p class="receipt" data-testid="read-receipt">
          {t('readBy', { names: readers.join(', ') })}
        </p>
      )}
    </div>
  );
}

interface ComposerProps {
  ctx: Ctx;
  room: Room;
  editing: MatrixEvent | null;
  edits: Map<string, Record<string, unknown>>;
  onDone: () => void;
}

function Composer({ ctx, room, editing, edits, onDone }: ComposerProps) {
  const { client } = ctx;
  const [text, setText] = useState('');
  const [attach, setAttach] = useState<'link' | 'music' | null>(null);
  const typingSent = useRef(0);
  const [busy, error, run] = useAction();
  const input = useRef<HTMLTextAreaElement>(null);
  const picker = useRef<HTMLInputElement>(null);
  const sendPicture = (field: HTMLInputElement) => {
    const file = field.files?.[0];
    field.value = '';
    if (!file) return;
    void run(async () => {
      if (!isPicture(file)) throw new Words(t('notAPicture'));
      const size = await createImageBitmap(file).then(
        (bitmap) => [bitmap.width, bitmap.height] as const,
        () => [undefined, undefined] as const,
      );
      const { content_uri } = await client.uploadContent(file, { name: file.name, type: file.type });
      await client.sendMessage(room.roomId, imageContent(content_uri, file, ...size) as never);
    });
  };

  // Before the browser paints (a layout effect): with a plain effect, text typed right after
  // choosing Edit could land first and then be overwritten by the old body.
  useLayoutEffect(() => {
    if (editing) {
      const content = edits.get(editing.getId() ?? '') ?? editing.getContent();
      setText(String(content.body ?? ''));
      input.current?.focus();
    }
  }, [editing?.getId()]);

  const onInput = (value: string) => {
    setText(value);
    const now = Date.now();
    if (value && now - typingSent.current > 3000) {
      typingSent.current = now;
      void client.sendTyping(room.roomId, true, 6000).catch(() => undefined);
    }
  };
  const send = (e?: Event) => {
    e?.preventDefault();
    const body = text.trim();
    if (!body) return;
    void run(async () => {
      setText('');
      typingSent.current = 0;
      if (editing) {
        await client.sendEvent(room.roomId, 'm.room.message' as never, editContent(editing.getId() ?? '', body) as never);
        onDone();
      } else {
        await client.sendTextMessage(room.roomId, body);
      }
      void client.sendTyping(room.roomId, false, 0).catch(() => undefined);
    });
  };
  return (
    <div class="composer-wrap">
      {attach && <Attach ctx={ctx} room={room} kind={attach} onClose={() => setAttach(null)} />}
      {editing && (
        <p class="editing">
          {t('editing')}{' '}
          <button
            class="link"
            onClick={() => {
              onDone();
              setText('');
            }}
          >
            {t('cancel')}
          </button>
        </p>
      )}
      <ErrorText error={error} />
      <form class="composer" onSubmit={send}>
        <button type="button" class="icon" onClick={() => setAttach(attach === 'link' ? null : 'link')} aria-label={t('shareLink')}>
          ↗
        </button>
        <button type="button" class="icon" onClick={() => setAttach(attach === 'music' ? null : 'music')} aria-label={t('shareMusic')}>
          ♪
        </button>
        <button type="button" class="icon" onClick={() => picker.current?.click()} aria-label={t('sendPicture')} disabled={busy}>
          ▣
        </button>
        <input ref={picker} type="file" name="picture" accept="image/jpeg,image/png,image/gif,image/webp" hidden onChange={(e) => sendPicture(e.currentTarget)} />
        <label class="sr-only" for="composer-input">
          {t('messageLabel')}
        </label>
        <textarea
          id="composer-input"
          ref={input}
          rows={1}
          placeholder={t('messageLabel')}
          value={text}
          maxLength={4000}
          onInput={(e) => onInput(e.currentTarget.value)}
          onKeyDown={(e) => {
            if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) send(e);
            if (e.key === 'Escape' && editing) onDone();
          }}
        />
        <button class="primary" type="submit" disabled={busy || !text.trim()}>
          {editing ? t('save') : t('send')}
        </button>
      </form>
    </div>
  );
}

function Attach({ ctx, room, kind, onClose }: { ctx: Ctx; room: Room; kind: 'link' | 'music'; onClose: () => void }) {
  const [url, setUrl] = useState('');
  const [title, setTitle] = useState('');
  const [extra, setExtra] = useState('');
  const [busy, error, run] = useAction();
  const submit = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const [type, content] =
        kind === 'link' ? [SHARE_CARD, shareCardContent(url, title, extra)] : [MUSIC_CARD, musicCardContent(url, title, extra)];
      await ctx.client.sendEvent(room.roomId, type as never, content as never);
      onClose();
    });
  };
  return (
    <form class="panel attach" onSubmit={submit} aria-label={kind === 'link' ? t('shareLink') : t('shareMusic')}>
      <label>
        {kind === 'link' ? t('linkUrl') : t('musicUrl')}
        <input name="url" type="url" required pattern="https?://.+" value={url} onInput={(e) => setUrl(e.currentTarget.value)} />
      </label>
      <label>
        {t('linkTitle')}
        <input name="title" required maxLength={256} value={title} onInput={(e) => setTitle(e.currentTarget.value)} />
      </label>
      <label>
        {kind === 'link' ? t('description') : t('artist')}
        <input name="extra" maxLength={kind === 'link' ? 2048 : 256} value={extra} onInput={(e) => setExtra(e.currentTarget.value)} />
      </label>
      <ErrorText error={error} />
      <div class="row">
        <button type="button" onClick={onClose}>
          {t('cancel')}
        </button>
        <button class="primary" type="submit" disabled={busy}>
          {t('send')}
        </button>
      </div>
    </form>
  );
}
