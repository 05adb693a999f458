import { ClientEvent, RoomEvent, RoomStateEvent } from 'matrix-js-sdk';
import { useState } from 'preact/hooks';
import type { Ctx } from '../App';
import { VirtualList } from '../components/VirtualList';
import { Avatar, ErrorText, Section, useAction } from '../components/ui';
import type { components } from '../../gen/laiwang';
import { go } from '../lib/hooks';
import { t } from '../lib/i18n';
import { ok } from '../lib/laiwang';
import { useLive, type Wakeable } from '../lib/live';
import { formatTime, localpart, socialProof } from '../lib/present';

type Item = components['schemas']['Zhadui'];
const V1 = '/_laiwang/client/v1';
// Joining or leaving a zhadui is a membership change in its discussion room, which /sync brings to
// everyone in it: reload the feed (counts, social proof) then, not only on the fallback poll.
const WAKE = [ClientEvent.Room, RoomEvent.MyMembership, RoomStateEvent.Members];

export function Zhadui({ ctx }: { ctx: Ctx }) {
  const { api } = ctx;
  const [feed, loadError, reload] = useLive(async () => {
    const [page, friends] = await Promise.all([
      ok(api.GET(`${V1}/zhadui/feed`, { params: { query: { limit: 100 } } })),
      ok(api.GET(`${V1}/friends`)),
    ]);
    const names: Record<string, string> = Object.fromEntries(
      (friends.friends ?? []).map((f) => [f.user_id ?? '', f.display_name || localpart(f.user_id ?? '')]),
    );
    return { items: page.items, names };
  }, { wake: ctx.client as unknown as Wakeable, events: WAKE });
  const [busy, error, run] = useAction();
  const nameOf = (userId: string) =>
    userId === ctx.session.userId ? t('me') : (feed && Object.hasOwn(feed.names, userId) ? feed.names[userId] : localpart(userId));
  const withId = (id: string) => ({ params: { path: { zhadui_id: id } } });
  const join = (z: Item) =>
    run(async () => {
      await ok(api.POST(`${V1}/zhadui/{zhadui_id}/join`, withId(z.zhadui_id)));
      await reload();
    });
  const leave = (z: Item) =>
    run(async () => {
      await ok(api.POST(`${V1}/zhadui/{zhadui_id}/leave`, withId(z.zhadui_id)));
      await reload();
    });
  const discuss = (z: Item) =>
    run(async () => {
      const { room_id } = await ok(api.GET(`${V1}/zhadui/{zhadui_id}/discussion`, withId(z.zhadui_id)));
      go('chats', room_id);
    });

  return (
    <div class="page zhadui">
      <h1>{t('zhadui')}</h1>
      <StartForm ctx={ctx} onDone={reload} />
      <ErrorText error={error || loadError} />
      {!feed ? (
        <p class="loading">{t('loading')}</p>
      ) : feed.items.length === 0 ? (
        <p class="muted pad">{t('feedEmpty')}</p>
      ) : (
        <VirtualList
          class="feed"
          label={t('zhadui')}
          items={feed.items}
          keyOf={(z) => z.zhadui_id}
          estimate={150}
          render={(z) => {
            const friends = (z.friends_in_it ?? []).filter((u) => u !== ctx.session.userId).map(nameOf);
            return (
              <article class="zhadui-item" aria-labelledby={`z-${z.zhadui_id}`} data-zhadui-id={z.zhadui_id}>
                <header>
                  <Avatar name={nameOf(z.creator)} />
                  <div>
                    <h2 id={`z-${z.zhadui_id}`}>{z.title}</h2>
                    <p class="muted">
                      {nameOf(z.creator)} · {formatTime(z.last_activity_at ?? z.created_at ?? 0)} · {t('participants', { count: z.participant_count })}
                      {z.status !== 'open' && ` · ${t('closed')}`}
                    </p>
                  </div>
                  {z.unread && <span class="dot" aria-label="new" />}
                </header>
                {z.body && <p class="zhadui-body">{z.body}</p>}
                {friends.length > 0 && (
                  <p class="proof" data-testid="social-proof">
                    {socialProof(friends)}
                  </p>
                )}
                <div class="row">
                  {z.joined ? (
                    <>
                      <button class="primary small" disabled={busy} onClick={() => discuss(z)} aria-label={`${t('discussion')}: ${z.title}`}>
                        {t('discussion')}
                      </button>
                      {z.creator !== ctx.session.userId && (
                        <button class="small" disabled={busy} onClick={() => leave(z)} aria-label={`${t('leave')}: ${z.title}`}>
                          {t('leave')}
                        </button>
                      )}
                    </>
                  ) : (
                    z.status === 'open' && (
                      <button class="primary small" disabled={busy} onClick={() => join(z)} aria-label={`${t('join')}: ${z.title}`}>
                        {t('join')}
                      </button>
                    )
                  )}
                </div>
              </article>
            );
          }}
        />
      )}
    </div>
  );
}

function StartForm({ ctx, onDone }: { ctx: Ctx; onDone: () => Promise<void> }) {
  const [title, setTitle] = useState('');
  const [body, setBody] = useState('');
  const [open, setOpen] = useState(false);
  const [busy, error, run] = useAction();
  if (!open) {
    return (
      <button class="primary start-zhadui" onClick={() => setOpen(true)}>
        {t('startZhadui')}
      </button>
    );
  }
  const submit = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      await ok(ctx.api.POST(`${V1}/zhadui`, { body: { title: title.trim(), body: body.trim() || undefined } }));
      setTitle('');
      setBody('');
      setOpen(false);
      await onDone();
    });
  };
  return (
    <Section title={t('startZhadui')} id="start-zhadui">
      <form onSubmit={submit} class="card-form flat">
        <label>
          {t('title')}
          <input name="title" required maxLength={100} value={title} onInput={(e) => setTitle(e.currentTarget.value)} />
        </label>
        <label>
          {t('body')}
          <textarea name="body" maxLength={4000} rows={3} value={body} onInput={(e) => setBody(e.currentTarget.value)} />
        </label>
        <ErrorText error={error} />
        <div class="row">
          <button type="button" onClick={() => setOpen(false)}>
            {t('cancel')}
          </button>
          <button class="primary" type="submit" disabled={busy}>
            {t('start')}
          </button>
        </div>
      </form>
    </Section>
  );
}
