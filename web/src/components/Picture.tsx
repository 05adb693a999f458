// An m.image message: the thumbnail through authenticated media, its body as the alt text, and a
// link-free frame sized from info.w/h so the timeline does not jump when it arrives.
import { t } from '../lib/i18n';
import { useMediaUrl } from '../lib/media';

export function Picture({ baseUrl, token, content }: { baseUrl: string; token: string; content: Record<string, unknown> }) {
  const state = useMediaUrl(baseUrl, token, content.url);
  const info = (typeof content.info === 'object' && content.info !== null ? content.info : {}) as { w?: unknown; h?: unknown };
  const w = typeof info.w === 'number' && info.w > 0 ? info.w : 4;
  const h = typeof info.h === 'number' && info.h > 0 ? info.h : 3;
  const alt = typeof content.body === 'string' ? content.body : t('picture');
  return (
    <figure class="picture" data-testid="picture" style={{ aspectRatio: `${w} / ${h}` }}>
      {state && 'url' in state ? (
        <img src={state.url} alt={alt} />
      ) : (
        <span class="muted picture-wait" role={state ? 'alert' : 'status'}>
          {state ? t('pictureFailed') : t('loading')}
        </span>
      )}
    </figure>
  );
}
