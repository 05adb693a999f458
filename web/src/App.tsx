import { ClientEvent, createClient, HttpApiEvent, type MatrixClient, SyncState } from 'matrix-js-sdk';
import { useEffect, useMemo, useState } from 'preact/hooks';
import { go, useHashRoute } from './lib/hooks';
import { t } from './lib/i18n';
import { laiwangApi, type LaiwangApi } from './lib/laiwang';
import { clearSession, loadSession, saveSession, type Session } from './lib/session';
import { Apps } from './screens/Apps';
import { Auth } from './screens/Auth';
import { Chats } from './screens/Chats';
import { Friends } from './screens/Friends';
import { Me } from './screens/Me';
import { Zhadui } from './screens/Zhadui';

export interface Ctx {
  client: MatrixClient;
  api: LaiwangApi;
  session: Session;
  signOut: () => Promise<void>;
}

const baseUrl = window.location.origin;
const TABS = ['chats', 'friends', 'zhadui', 'apps', 'me'] as const;

export function App() {
  const [session, setSession] = useState<Session | null>(() => loadSession());
  const onSession = (s: Session) => {
    saveSession(s);
    setSession(s);
    go('chats');
  };
  if (!session) return <Auth baseUrl={baseUrl} onSession={onSession} />;
  return (
    <SignedIn
      key={session.accessToken}
      session={session}
      onSignedOut={() => {
        clearSession();
        setSession(null);
      }}
    />
  );
}

function SignedIn({ session, onSignedOut }: { session: Session; onSignedOut: () => void }) {
  const client = useMemo(
    () => createClient({ baseUrl, userId: session.userId, deviceId: session.deviceId, accessToken: session.accessToken }),
    [session],
  );
  const api = useMemo(() => laiwangApi(baseUrl, () => session.accessToken), [session]);
  const [sync, setSync] = useState<SyncState | null>(null);
  const [online, setOnline] = useState(navigator.onLine);

  useEffect(() => {
    const onSync = (state: SyncState) => setSync(state);
    const onLoggedOut = () => onSignedOut();
    client.on(ClientEvent.Sync, onSync);
    client.on(HttpApiEvent.SessionLoggedOut, onLoggedOut);
    // The browser knows first when the network goes; when it is back, sync retries at once.
    const wentOffline = () => setOnline(false);
    const cameBack = () => {
      setOnline(true);
      client.retryImmediately();
    };
    window.addEventListener('offline', wentOffline);
    window.addEventListener('online', cameBack);
    void client.startClient({ initialSyncLimit: 30, pollTimeout: 25_000 });
    return () => {
      window.removeEventListener('offline', wentOffline);
      window.removeEventListener('online', cameBack);
      client.off(ClientEvent.Sync, onSync);
      client.off(HttpApiEvent.SessionLoggedOut, onLoggedOut);
      client.stopClient();
    };
  }, [client]);

  const signOut = async () => {
    try {
      await client.logout(true);
    } finally {
      onSignedOut();
    }
  };
  const ctx: Ctx = { client, api, session, signOut };
  const route = useHashRoute();
  const tab = (TABS as readonly string[]).includes(route[0]) ? route[0] : 'chats';
  const offline = !online || sync === SyncState.Error || sync === SyncState.Reconnecting;
  const ready = sync !== null && sync !== SyncState.Stopped && (sync !== SyncState.Error || client.isInitialSyncComplete());

  return (
    <div class={`shell tab-${tab}`}>
      <a class="skip" href="#main">
        {t('skipToContent')}
      </a>
      {offline && (
        <div class="banner" role="status" aria-live="assertive" data-testid="offline-banner">
          {t('offline')}
        </div>
      )}
      <nav class="tabs-nav" aria-label={t('appName')}>
        <span class="nav-brand" aria-hidden="true">
          来往
        </span>
        {TABS.map((name) => (
          <a key={name} href={`#/${name}`} aria-current={tab === name ? 'page' : undefined} class={`nav-${name}`}>
            <span class="nav-icon" aria-hidden="true">
              {{ chats: '✉', friends: '☺', zhadui: '✦', apps: '▦', me: '⚙' }[name]}
            </span>
            <span>{t(name)}</span>
          </a>
        ))}
      </nav>
      <main id="main" class="content">
        {!ready ? (
          <p class="loading" role="status">
            {t('loading')}
          </p>
        ) : tab === 'chats' ? (
          <Chats ctx={ctx} roomId={route[1]} />
        ) : tab === 'friends' ? (
          <Friends ctx={ctx} />
        ) : tab === 'zhadui' ? (
          <Zhadui ctx={ctx} />
        ) : tab === 'apps' ? (
          <Apps ctx={ctx} />
        ) : (
          <Me ctx={ctx} />
        )}
      </main>
    </div>
  );
}
