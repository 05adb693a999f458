import { useState } from 'preact/hooks';
import { ErrorText } from '../components/ui';
import { anonymousClient, type PhoneChallenge, requestPhoneCode, signIn, signUp } from '../lib/account';
import { describeError } from '../lib/errors';
import { t } from '../lib/i18n';
import type { Session } from '../lib/session';

export function Auth({ baseUrl, onSession }: { baseUrl: string; onSession: (s: Session) => void }) {
  const [mode, setMode] = useState<'in' | 'up'>('up');
  return (
    <main class="auth">
      <header class="brand">
        <h1>
          来往 <span>Laiwang</span>
        </h1>
        <p>{t('tagline')}</p>
      </header>
      <div class="tabs" role="tablist" aria-label={t('appName')}>
        <button role="tab" aria-selected={mode === 'up'} onClick={() => setMode('up')} id="tab-up">
          {t('signUp')}
        </button>
        <button role="tab" aria-selected={mode === 'in'} onClick={() => setMode('in')} id="tab-in">
          {t('signIn')}
        </button>
      </div>
      {mode === 'up' ? <SignUp baseUrl={baseUrl} onSession={onSession} /> : <SignIn baseUrl={baseUrl} onSession={onSession} />}
      <footer class="auth-links">
        <a href="/about">{t('serverInfo')}</a> · <a href="/healthz">{t('health')}</a>
      </footer>
    </main>
  );
}

function SignIn({ baseUrl, onSession }: { baseUrl: string; onSession: (s: Session) => void }) {
  const [user, setUser] = useState('');
  const [password, setPassword] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError('');
    try {
      onSession(await signIn(baseUrl, user, password));
    } catch (err) {
      setError(describeError(err, 'login'));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card-form" onSubmit={submit} aria-labelledby="tab-in">
      <label>
        {t('userOrPhone')}
        <input name="user" autocomplete="username" required value={user} onInput={(e) => setUser(e.currentTarget.value)} />
      </label>
      <label>
        {t('password')}
        <input
          name="password"
          type="password"
          autocomplete="current-password"
          required
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
      </label>
      <ErrorText error={error} />
      <button class="primary" type="submit" disabled={busy}>
        {busy ? t('working') : t('signIn')}
      </button>
    </form>
  );
}

function SignUp({ baseUrl, onSession }: { baseUrl: string; onSession: (s: Session) => void }) {
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [phone, setPhone] = useState('');
  const [code, setCode] = useState('');
  const [challenge, setChallenge] = useState<PhoneChallenge | null>(null);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState('');

  const sendCode = async () => {
    setBusy(true);
    setError('');
    try {
      const client = anonymousClient(baseUrl);
      if (username.trim()) await client.isUsernameAvailable(username.trim());
      setChallenge(await requestPhoneCode(client, phone, challenge ?? undefined));
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  };
  const submit = async (e: Event) => {
    e.preventDefault();
    if (!challenge) return sendCode();
    setBusy(true);
    setError('');
    try {
      onSession(await signUp(baseUrl, username, password, challenge, code));
    } catch (err) {
      setError(describeError(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="card-form" onSubmit={submit} aria-labelledby="tab-up">
      <label>
        {t('username')}
        <input
          name="username"
          autocomplete="username"
          required
          pattern="[a-z0-9._=/\-]+"
          value={username}
          onInput={(e) => setUsername(e.currentTarget.value.toLowerCase())}
        />
      </label>
      <label>
        {t('password')}
        <input
          name="new-password"
          type="password"
          autocomplete="new-password"
          required
          minLength={8}
          value={password}
          onInput={(e) => setPassword(e.currentTarget.value)}
        />
      </label>
      <label>
        {t('phone')}
        <input
          name="phone"
          type="tel"
          autocomplete="tel-national"
          inputMode="tel"
          required
          value={phone}
          onInput={(e) => setPhone(e.currentTarget.value)}
        />
      </label>
      {challenge && (
        <>
          <p class="muted" aria-live="polite">
            {t('codeSent', { phone: `+${challenge.msisdn.replace(/^\+/, '')}` })}
          </p>
          <label>
            {t('smsCode')}
            <input
              name="code"
              inputMode="numeric"
              autocomplete="one-time-code"
              pattern="\d{6}"
              required
              value={code}
              onInput={(e) => setCode(e.currentTarget.value)}
            />
          </label>
        </>
      )}
      <ErrorText error={error} />
      <div class="row">
        <button type="button" onClick={sendCode} disabled={busy || !phone.trim()} class={challenge ? '' : 'primary'}>
          {challenge ? t('resendCode') : t('sendCode')}
        </button>
        {challenge && (
          <button class="primary" type="submit" disabled={busy}>
            {busy ? t('working') : t('createAccount')}
          </button>
        )}
      </div>
    </form>
  );
}
