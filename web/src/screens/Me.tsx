import { useEffect, useState } from 'preact/hooks';
import type { Ctx } from '../App';
import { ErrorText, Section, useAction } from '../components/ui';
import { type Lang, language, setLanguage, t } from '../lib/i18n';

interface Device {
  device_id: string;
  display_name?: string;
  last_seen_ts?: number;
}

export function Me({ ctx }: { ctx: Ctx }) {
  const { client, session } = ctx;
  const [devices, setDevices] = useState<Device[] | null>(null);
  const [busy, error, run] = useAction();
  const [, setLang] = useState<Lang>(language());
  useEffect(() => {
    void run(async () => setDevices((await client.getDevices()).devices));
  }, []);
  return (
    <div class="page me">
      <h1>{t('me')}</h1>
      <Section title={t('signedInAs', { user: session.userId })} id="account">
        <div class="row">
          <label>
            {t('language')}{' '}
            <select
              value={language()}
              onChange={(e) => {
                const lang = e.currentTarget.value as Lang;
                setLanguage(lang);
                document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
                setLang(lang);
              }}
            >
              <option value="zh">中文</option>
              <option value="en">English</option>
            </select>
          </label>
          <button disabled={busy} onClick={() => run(ctx.signOut)}>
            {t('signOut')}
          </button>
        </div>
      </Section>
      <Section title={t('devices')} id="devices">
        <ErrorText error={error} />
        <ul class="devices">
          {(devices ?? []).map((d) => (
            <li key={d.device_id}>
              <strong>{d.display_name || d.device_id}</strong> <code>{d.device_id}</code>
              {d.device_id === session.deviceId && <span class="tag">{t('thisDevice')}</span>}
            </li>
          ))}
        </ul>
      </Section>
      <p class="links">
        <a href="/about">{t('serverInfo')}</a> · <a href="/healthz">{t('health')}</a>
      </p>
    </div>
  );
}
