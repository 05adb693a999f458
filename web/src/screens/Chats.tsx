import {
  ClientEvent,
  KnownMembership,
  NotificationCountType,
  type Room,
  RoomEvent,
} from 'matrix-js-sdk';
import { useEffect, useState } from 'preact/hooks';
import type { Ctx } from '../App';
import { VirtualList } from '../components/VirtualList';
import { Avatar, ErrorText, useAction } from '../components/ui';
import { CARD_TYPES } from '../lib/cards';
import { go, useEvents } from '../lib/hooks';
import { t } from '../lib/i18n';
import { ok } from '../lib/laiwang';
import { formatTime, isEdit, previewOf, unreadBadge } from '../lib/present';
import { roomName } from '../lib/rooms';
import { RoomView } from './Room';

const LIST_EVENTS = [
  ClientEvent.Room,
  ClientEvent.DeleteRoom,
  RoomEvent.Timeline,
  RoomEvent.Name,
  RoomEvent.MyMembership,
  RoomEvent.UnreadNotifications,
  RoomEvent.Redaction,
  RoomEvent.Receipt,
] as const;

export function visibleRooms(rooms: Room[]): Room[] {
  return rooms
    .filter((r) => {
      const m = r.getMyMembership();
      return m === KnownMembership.Join || m === KnownMembership.Invite;
    })
    .sort((a, b) => b.getLastActiveTimestamp() - a.getLastActiveTimestamp());
}

function lastMessage(room: Room): { text: string; ts: number } {
  const events = room.getLiveTimeline().getEvents();
  for (let i = events.length - 1; i >= 0; i--) {
    const e = events[i];
    const type = e.getType();
    if ((type === 'm.room.message' || CARD_TYPES.has(type)) && !isEdit(e.getContent())) {
      const content = e.replacingEvent()?.getContent()['m.new_content'] ?? e.getContent();
      return { text: previewOf(type, content, e.isRedacted()), ts: e.getTs() };
    }
  }
  return { text: '', ts: room.getLastActiveTimestamp() };
}

export function Chats({ ctx, roomId }: { ctx: Ctx; roomId?: string }) {
  const { client } = ctx;
  useEvents(client, LIST_EVENTS);
  const [creating, setCreating] = useState(false);
  const rooms = visibleRooms(client.getRooms());
  return (
    <div class={`split ${roomId ? 'has-room' : ''}`}>
      <section class="list-pane" aria-labelledby="chats-heading">
        <header class="pane-head">
          <h1 id="chats-heading">{t('chats')}</h1>
          <button onClick={() => setCreating(true)} class="small">
            {t('newGroup')}
          </button>
        </header>
        {creating && <NewGroup ctx={ctx} onClose={() => setCreating(false)} />}
        {rooms.length === 0 ? (
          <p class="muted pad">{t('noChats')}</p>
        ) : (
          <VirtualList
            label={t('chats')}
            items={rooms}
            keyOf={(r) => r.roomId}
            estimate={68}
            render={(room) => <RoomRow room={room} selected={room.roomId === roomId} />}
          />
        )}
      </section>
      <section class="main-pane">
        {roomId ? (
          <RoomView ctx={ctx} roomId={roomId} key={roomId} />
        ) : (
          <div class="placeholder" aria-hidden="true">
            来往
          </div>
        )}
      </section>
    </div>
  );
}

function RoomRow({ room, selected }: { room: Room; selected: boolean }) {
  const unread = room.getUnreadNotificationCount(NotificationCountType.Total);
  const invited = room.getMyMembership() === KnownMembership.Invite;
  const last = lastMessage(room);
  return (
    <a
      class={`room-row ${selected ? 'selected' : ''}`}
      href={`#/chats/${encodeURIComponent(room.roomId)}`}
      aria-current={selected ? 'true' : undefined}
      data-room-id={room.roomId}
    >
      <Avatar name={roomName(room)} />
      <span class="room-main">
        <span class="room-name">{roomName(room)}</span>
        <span class="room-last">{invited ? t('invited') : last.text}</span>
      </span>
      <span class="room-meta">
        {last.ts > 0 && <time>{formatTime(last.ts)}</time>}
        {unread > 0 && (
          <span class="badge" aria-label={t('unread', { count: unread })} data-testid="unread">
            {unreadBadge(unread)}
          </span>
        )}
      </span>
    </a>
  );
}

function NewGroup({ ctx, onClose }: { ctx: Ctx; onClose: () => void }) {
  const [friends, setFriends] = useState<{ user_id: string; display_name?: string }[]>([]);
  const [chosen, setChosen] = useState<Set<string>>(new Set());
  const [name, setName] = useState('');
  const [busy, error, run] = useAction();
  useEffect(() => {
    void run(async () => {
      const body = await ok(ctx.api.GET('/_laiwang/client/v1/friends'));
      setFriends((body.friends ?? []).flatMap((f) => (f.user_id ? [{ user_id: f.user_id, display_name: f.display_name }] : [])));
    });
  }, []);
  const toggle = (id: string) => {
    const next = new Set(chosen);
    if (next.has(id)) next.delete(id);
    else next.add(id);
    setChosen(next);
  };
  const submit = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      const { room_id } = await ctx.client.createRoom({ name: name.trim() || undefined, invite: [...chosen], preset: 'private_chat' as never });
      onClose();
      go('chats', room_id);
    });
  };
  return (
    <form class="panel dialog" onSubmit={submit} aria-label={t('newGroup')}>
      <label>
        {t('groupName')}
        <input name="group-name" value={name} maxLength={255} onInput={(e) => setName(e.currentTarget.value)} />
      </label>
      <fieldset>
        <legend>{t('chooseFriends')}</legend>
        {friends.length === 0 && <p class="muted">{t('none')}</p>}
        {friends.map((f) => (
          <label key={f.user_id} class="check">
            <input type="checkbox" checked={chosen.has(f.user_id)} onChange={() => toggle(f.user_id)} />
            {f.display_name || f.user_id}
          </label>
        ))}
      </fieldset>
      <ErrorText error={error} />
      <div class="row">
        <button type="button" onClick={onClose}>
          {t('cancel')}
        </button>
        <button class="primary" type="submit" disabled={busy || chosen.size === 0}>
          {t('create')}
        </button>
      </div>
    </form>
  );
}
