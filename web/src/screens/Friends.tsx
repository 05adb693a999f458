import { ClientEvent, RoomEvent, RoomStateEvent } from 'matrix-js-sdk';
import { useState } from 'preact/hooks';
import type { Ctx } from '../App';
import { VirtualList } from '../components/VirtualList';
import { Avatar, Empty, ErrorText, Section, useAction } from '../components/ui';
import { numbersFromFile } from '../lib/book';
import { directRoom } from '../lib/direct';
import { go } from '../lib/hooks';
import { t } from '../lib/i18n';
import { ok } from '../lib/laiwang';
import { useLive, type Wakeable } from '../lib/live';
import { localpart } from '../lib/present';

const V1 = '/_laiwang/client/v1';
// A /sync with a new room or a membership change (a new friend's chat, a group) may go with a
// friend-graph change: reload then, not only on the fallback poll.
const WAKE = [ClientEvent.Room, RoomEvent.MyMembership, RoomStateEvent.Members];

interface Person {
  user_id: string;
  display_name?: string;
}

function people<T extends { user_id?: string; display_name?: string }>(list: T[] | undefined): (T & Person)[] {
  return (list ?? []).filter((p): p is T & Person => typeof p.user_id === 'string');
}

export function Friends({ ctx }: { ctx: Ctx }) {
  const { api } = ctx;
  const [state, loadError, reload] = useLive(async () => {
    const [matches, suggestions, requests, friends, blocks] = await Promise.all([
      ok(api.GET(`${V1}/contacts/matches`)),
      ok(api.GET(`${V1}/suggestions`)),
      ok(api.GET(`${V1}/friends/requests`)),
      ok(api.GET(`${V1}/friends`)),
      ok(api.GET(`${V1}/blocks`)),
    ]);
    return {
      matches: people(matches.matches),
      suggestions: people(suggestions.suggestions),
      incoming: (requests.incoming ?? []).flatMap((r) => (r.from ? [{ user_id: r.from, display_name: r.display_name, message: r.message }] : [])),
      outgoing: (requests.outgoing ?? []).flatMap((r) => (r.to ? [{ user_id: r.to, display_name: r.display_name }] : [])),
      friends: people(friends.friends),
      blocks: blocks.user_ids ?? [],
    };
  }, { wake: ctx.client as unknown as Wakeable, events: WAKE });
  const [busy, error, run] = useAction();
  const act = (fn: () => Promise<unknown>) => run(async () => {
    await fn();
    await reload();
  });
  const friendIds = new Set(state?.friends.map((f) => f.user_id));
  const pending = new Set(state?.outgoing.map((f) => f.user_id));
  const name = (p: Person) => p.display_name || localpart(p.user_id);
  // Matches, then suggestions not already among them, without people who are friends already.
  const known = state
    ? [...state.matches, ...state.suggestions.filter((s) => !state.matches.some((m) => m.user_id === s.user_id))].filter(
        (p) => !friendIds.has(p.user_id),
      )
    : [];
  const request = (userId: string) => act(() => ok(api.POST(`${V1}/friends/requests`, { body: { user_id: userId } })));
  const path = { params: { path: { user_id: '' } } };
  const withUser = (userId: string) => ({ params: { path: { user_id: userId } } }) as typeof path;

  return (
    <div class="page friends">
      <h1>{t('friends')}</h1>
      <ErrorText error={error || loadError} />
      <Upload ctx={ctx} onDone={reload} />
      {!state ? (
        <p class="loading">{t('loading')}</p>
      ) : (
        <div class="columns">
          <Section title={t('requests')} id="requests">
            {state.incoming.length === 0 ? <Empty /> : null}
            <ul class="people">
              {state.incoming.map((p) => (
                <li key={p.user_id} class="person">
                  <Avatar name={name(p)} />
                  <span class="person-name">
                    {name(p)}
                    {p.message && <small>{p.message}</small>}
                  </span>
                  <button class="primary small" disabled={busy} onClick={() => act(() => ok(api.POST(`${V1}/friends/requests/{user_id}/accept`, withUser(p.user_id))))} aria-label={`${t('accept')} ${name(p)}`}>
                    {t('accept')}
                  </button>
                  <button class="small" disabled={busy} onClick={() => act(() => ok(api.POST(`${V1}/friends/requests/{user_id}/decline`, withUser(p.user_id))))} aria-label={`${t('decline')} ${name(p)}`}>
                    {t('decline')}
                  </button>
                </li>
              ))}
            </ul>
          </Section>
          <Section title={t('matches')} id="matches">
            {known.length === 0 ? <Empty /> : null}
            <ul class="people">
              {known.map((p) => (
                <li key={p.user_id} class="person">
                  <Avatar name={name(p)} />
                  <span class="person-name">{name(p)}</span>
                  {pending.has(p.user_id) ? (
                    <span class="muted">{t('requested')}</span>
                  ) : (
                    <button class="primary small" disabled={busy} onClick={() => request(p.user_id)} aria-label={`${t('addFriend')} ${name(p)}`}>
                      {t('addFriend')}
                    </button>
                  )}
                  {state.suggestions.some((s) => s.user_id === p.user_id) && (
                    <button class="small" disabled={busy} onClick={() => act(() => ok(api.DELETE(`${V1}/suggestions/{user_id}`, withUser(p.user_id))))} aria-label={`${t('dismiss')} ${name(p)}`}>
                      {t('dismiss')}
                    </button>
                  )}
                </li>
              ))}
            </ul>
            {state.outgoing.length > 0 && (
              <>
                <h3>{t('outgoing')}</h3>
                <ul class="people">
                  {state.outgoing.map((p) => (
                    <li key={p.user_id} class="person">
                      <Avatar name={name(p)} />
                      <span class="person-name">{name(p)}</span>
                      <button class="small" disabled={busy} onClick={() => act(() => ok(api.POST(`${V1}/friends/requests/{user_id}/decline`, withUser(p.user_id))))} aria-label={`${t('withdraw')} ${name(p)}`}>
                        {t('withdraw')}
                      </button>
                    </li>
                  ))}
                </ul>
              </>
            )}
          </Section>
          <Section title={t('friendList')} id="friend-list">
            {state.friends.length === 0 ? (
              <Empty />
            ) : (
              <VirtualList
                class="people-list"
                label={t('friendList')}
                items={state.friends}
                keyOf={(p) => p.user_id}
                estimate={60}
                render={(p) => (
                  <div class="person">
                    <Avatar name={name(p)} />
                    <span class="person-name">
                      {name(p)}
                      {(p.mutual_friends ?? 0) > 0 && <small>{t('mutual', { count: p.mutual_friends ?? 0 })}</small>}
                    </span>
                    <button class="primary small" disabled={busy} onClick={() => run(async () => go('chats', await directRoom(ctx.client, p.user_id)))} aria-label={`${t('message')} ${name(p)}`}>
                      {t('message')}
                    </button>
                    <button class="small" disabled={busy} onClick={() => act(() => ok(api.PUT(`${V1}/blocks/{user_id}`, withUser(p.user_id))))} aria-label={`${t('block')} ${name(p)}`}>
                      {t('block')}
                    </button>
                    <button class="small" disabled={busy} onClick={() => act(() => ok(api.DELETE(`${V1}/friends/{user_id}`, withUser(p.user_id))))} aria-label={`${t('remove')} ${name(p)}`}>
                      {t('remove')}
                    </button>
                  </div>
                )}
              />
            )}
          </Section>
          <Section title={t('blocked')} id="blocked">
            {state.blocks.length === 0 ? <Empty /> : null}
            <ul class="people">
              {state.blocks.map((userId) => (
                <li key={userId} class="person">
                  <Avatar name={localpart(userId)} />
                  <span class="person-name">{localpart(userId)}</span>
                  <button class="small" disabled={busy} onClick={() => act(() => ok(api.DELETE(`${V1}/blocks/{user_id}`, withUser(userId))))} aria-label={`${t('unblock')} ${localpart(userId)}`}>
                    {t('unblock')}
                  </button>
                </li>
              ))}
            </ul>
          </Section>
        </div>
      )}
    </div>
  );
}

function Upload({ ctx, onDone }: { ctx: Ctx; onDone: () => Promise<void> }) {
  const [result, setResult] = useState('');
  const [busy, error, run] = useAction();
  const onFile = (file: File | undefined) => {
    if (!file) return;
    void run(async () => {
      setResult('');
      const numbers = numbersFromFile(file.name, await file.text());
      if (numbers.length === 0) {
        setResult(t('noNumbers'));
        return;
      }
      const answer = await ok(ctx.api.POST(`${V1}/contacts/upload`, { body: { numbers, region: 'CN' } }));
      setResult(t('uploaded', { count: numbers.length, matches: answer.matches?.length ?? 0 }));
      await onDone();
    });
  };
  return (
    <Section title={t('uploadBook')} id="upload">
      <p class="muted">{t('uploadHint')}</p>
      <label class="file">
        {t('chooseFile')}
        <input type="file" name="book" accept=".vcf,.csv,text/vcard,text/csv" disabled={busy} onChange={(e) => onFile(e.currentTarget.files?.[0])} />
      </label>
      {result && (
        <p role="status" class="ok" data-testid="upload-result">
          {result}
        </p>
      )}
      <ErrorText error={error} />
    </Section>
  );
}
