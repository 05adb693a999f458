// The open platform, as far as it has landed: the apps a user registers (the app registry,
// docs/open_platform.md). Subscribing to apps and the AA bill come with later steps of issue 12.
import { useState } from 'preact/hooks';
import type { Ctx } from '../App';
import { Empty, ErrorText, Section, useAction } from '../components/ui';
import type { components } from '../../gen/laiwang';
import { Words } from '../lib/errors';
import { t } from '../lib/i18n';
import { useLive } from '../lib/live';
import { ok } from '../lib/laiwang';
import { formatTime, webhookSummary } from '../lib/present';

type App = components['schemas']['App'];
const V1 = '/_laiwang/client/v1';
const SCOPES = ['profile:read', 'cards:write', 'subscribers:message', 'payments'] as const;
type Scope = (typeof SCOPES)[number];

interface Secrets {
  name: string;
  clientId: string;
  clientSecret?: string;
  webhookSecret?: string;
}

export function Apps({ ctx }: { ctx: Ctx }) {
  const { api } = ctx;
  const [apps, loadError, reload] = useLive(async () => (await ok(api.GET(`${V1}/apps`))).apps, { fastMs: 10_000, slowMs: 60_000 });
  const [registering, setRegistering] = useState(false);
  const [secrets, setSecrets] = useState<Secrets | null>(null);
  const [busy, error, run] = useAction();
  const withId = (id: string) => ({ params: { path: { client_id: id } } });
  const act = (fn: () => Promise<unknown>) =>
    run(async () => {
      await fn();
      await reload();
    });

  return (
    <div class="page apps">
      <h1>{t('apps')}</h1>
      <p class="muted">{t('appsIntro')}</p>
      {secrets && <SecretsShown secrets={secrets} onClose={() => setSecrets(null)} />}
      {registering ? (
        <Register
          ctx={ctx}
          onClose={() => setRegistering(false)}
          onDone={async (s) => {
            setRegistering(false);
            setSecrets(s);
            await reload();
          }}
        />
      ) : (
        <button class="primary start-zhadui" onClick={() => setRegistering(true)}>
          {t('registerApp')}
        </button>
      )}
      <ErrorText error={error || loadError} />
      <Section title={t('myApps')} id="my-apps">
        {!apps ? (
          <p class="loading">{t('loading')}</p>
        ) : apps.length === 0 ? (
          <Empty />
        ) : (
          <ul class="app-list">
            {apps.map((app: App) => (
              <li key={app.client_id} class="app-item" data-client-id={app.client_id}>
                <div class="app-head">
                  <h3>{app.name}</h3>
                  <span class={`tag ${app.suspended ? 'tag-off' : ''}`}>{app.suspended ? t('suspended') : t('active')}</span>
                </div>
                {app.description && <p>{app.description}</p>}
                <dl class="facts">
                  <dt>{t('clientId')}</dt>
                  <dd>
                    <code>{app.client_id}</code>
                  </dd>
                  <dt>{t('botUser')}</dt>
                  <dd>
                    <code>{app.bot_user_id}</code>
                  </dd>
                  <dt>{t('scopes')}</dt>
                  <dd>{app.scopes.length > 0 ? app.scopes.join(', ') : t('none')}</dd>
                  <dt>{t('registered')}</dt>
                  <dd>{formatTime(app.created_at)}</dd>
                </dl>
                {app.webhook_url && <WebhookStatus ctx={ctx} app={app} />}
                <div class="row">
                  {app.suspended ? (
                    <button class="small" disabled={busy} onClick={() => act(() => ok(api.POST(`${V1}/apps/{client_id}/resume`, withId(app.client_id))))} aria-label={`${t('resume')}: ${app.name}`}>
                      {t('resume')}
                    </button>
                  ) : (
                    <button class="small" disabled={busy} onClick={() => act(() => ok(api.POST(`${V1}/apps/{client_id}/suspend`, withId(app.client_id))))} aria-label={`${t('suspend')}: ${app.name}`}>
                      {t('suspend')}
                    </button>
                  )}
                  <button
                    class="small danger"
                    disabled={busy}
                    onClick={() => {
                      if (window.confirm(t('deleteAppConfirm', { name: app.name }))) void act(() => ok(api.DELETE(`${V1}/apps/{client_id}`, withId(app.client_id))));
                    }}
                    aria-label={`${t('delete')}: ${app.name}`}
                  >
                    {t('delete')}
                  </button>
                </div>
              </li>
            ))}
          </ul>
        )}
      </Section>
    </div>
  );
}

// The endpoint's health: a paused one (it kept failing; the app's bot told the owner) has its button.
function WebhookStatus({ ctx, app }: { ctx: Ctx; app: App }) {
  const { api } = ctx;
  const path = { params: { path: { client_id: app.client_id } } };
  const [health, , reload] = useLive(async () => ok(api.GET(`${V1}/apps/{client_id}/webhook`, path)), { fastMs: 10_000, slowMs: 60_000 });
  const [busy, error, run] = useAction();
  if (!health) return null;
  return (
    <div class="webhook-health" data-testid="webhook-health">
      <p class={health.paused ? 'warning' : 'muted'}>{webhookSummary(health)}</p>
      {health.paused && (
        <button
          class="small"
          disabled={busy}
          onClick={() =>
            run(async () => {
              await ok(api.POST(`${V1}/apps/{client_id}/webhook/resume`, path));
              await reload();
            })
          }
          aria-label={`${t('resumeWebhook')}: ${app.name}`}
        >
          {t('resumeWebhook')}
        </button>
      )}
      <ErrorText error={error} />
    </div>
  );
}

function SecretsShown({ secrets, onClose }: { secrets: Secrets; onClose: () => void }) {
  return (
    <section class="panel secrets" role="alert" aria-labelledby="secrets-heading" data-testid="app-secrets">
      <h2 id="secrets-heading">{t('appRegistered', { name: secrets.name })}</h2>
      <p>{t('secretsOnce')}</p>
      <dl class="facts">
        <dt>{t('clientId')}</dt>
        <dd>
          <code>{secrets.clientId}</code>
        </dd>
        {secrets.clientSecret && (
          <>
            <dt>{t('clientSecret')}</dt>
            <dd>
              <code>{secrets.clientSecret}</code>
            </dd>
          </>
        )}
        {secrets.webhookSecret && (
          <>
            <dt>{t('webhookSecret')}</dt>
            <dd>
              <code>{secrets.webhookSecret}</code>
            </dd>
          </>
        )}
      </dl>
      <button onClick={onClose}>{t('secretsSaved')}</button>
    </section>
  );
}

function Register({ ctx, onClose, onDone }: { ctx: Ctx; onClose: () => void; onDone: (s: Secrets) => Promise<void> }) {
  const [name, setName] = useState('');
  const [description, setDescription] = useState('');
  const [homepage, setHomepage] = useState('');
  const [redirect, setRedirect] = useState('');
  const [webhook, setWebhook] = useState('');
  const [scopes, setScopes] = useState<Set<Scope>>(new Set());
  const [publicClient, setPublicClient] = useState(false);
  const [busy, error, run] = useAction();
  const toggle = (scope: Scope) => {
    const next = new Set(scopes);
    if (next.has(scope)) next.delete(scope);
    else next.add(scope);
    setScopes(next);
  };
  const submit = (e: Event) => {
    e.preventDefault();
    void run(async () => {
      if (!name.trim()) throw new Words(t('appNameNeeded'));
      const app = await ok(
        ctx.api.POST(`${V1}/apps`, {
          body: {
            name: name.trim(),
            description: description.trim() || undefined,
            homepage_url: homepage.trim() || undefined,
            redirect_uris: redirect.trim() ? [redirect.trim()] : [],
            webhook_url: webhook.trim() || undefined,
            scopes: [...scopes],
            public_client: publicClient,
          },
        }),
      );
      await onDone({ name: app.name, clientId: app.client_id, clientSecret: app.client_secret, webhookSecret: app.webhook_secret });
    });
  };
  return (
    <Section title={t('registerApp')} id="register-app">
      <form onSubmit={submit} class="card-form flat">
        <label>
          {t('appNameLabel')}
          <input name="app-name" required maxLength={64} value={name} onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <label>
          {t('description')}
          <textarea name="app-description" maxLength={1000} rows={2} value={description} onInput={(e) => setDescription(e.currentTarget.value)} />
        </label>
        <label>
          {t('homepage')}
          <input name="homepage" type="url" maxLength={2048} placeholder="https://" value={homepage} onInput={(e) => setHomepage(e.currentTarget.value)} />
        </label>
        <label>
          {t('redirectUri')}
          <input name="redirect-uri" type="url" maxLength={2048} placeholder="https://" value={redirect} onInput={(e) => setRedirect(e.currentTarget.value)} />
        </label>
        <label>
          {t('webhookUrl')}
          <input name="webhook-url" type="url" maxLength={2048} placeholder="https://" value={webhook} onInput={(e) => setWebhook(e.currentTarget.value)} />
        </label>
        <fieldset>
          <legend>{t('scopes')}</legend>
          {SCOPES.map((scope) => (
            <label key={scope} class="check">
              <input type="checkbox" checked={scopes.has(scope)} onChange={() => toggle(scope)} />
              <code>{scope}</code> {t(`scope_${scope.replace(':', '_')}` as never)}
            </label>
          ))}
        </fieldset>
        <label class="check">
          <input type="checkbox" name="public-client" checked={publicClient} onChange={() => setPublicClient(!publicClient)} />
          {t('publicClient')}
        </label>
        <ErrorText error={error} />
        <div class="row">
          <button type="button" onClick={onClose}>
            {t('cancel')}
          </button>
          <button class="primary" type="submit" disabled={busy}>
            {t('register')}
          </button>
        </div>
      </form>
    </Section>
  );
}
