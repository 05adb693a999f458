// Cards render from the display model in lib/cards.ts: plain text nodes and http(s) links only, no
// HTML from the event, so a card can look rich but cannot run script.
import { cardOf, formatDuration, formatFen } from '../lib/cards';
import { t } from '../lib/i18n';

export function CardView({ type, content }: { type: string; content: Record<string, unknown> }) {
  const card = cardOf(type, content);
  switch (card.kind) {
    case 'share':
      return (
        <article class="card card-share" data-testid="card">
          {card.image && <img src={card.image} alt="" referrerpolicy="no-referrer" loading="lazy" />}
          <a href={card.url} target="_blank" rel="noopener noreferrer nofollow" class="card-title">
            {card.title}
          </a>
          {card.description && <p>{card.description}</p>}
          <span class="card-host">{new URL(card.url).host}</span>
        </article>
      );
    case 'music':
      return (
        <article class="card card-music" data-testid="card">
          <span class="card-icon" aria-hidden="true">
            ♪
          </span>
          <div>
            <a href={card.url} target="_blank" rel="noopener noreferrer nofollow" class="card-title">
              {card.title}
            </a>
            {card.artist && <p>{card.artist}</p>}
            {card.durationMs !== undefined && <span class="muted">{formatDuration(card.durationMs)}</span>}
          </div>
        </article>
      );
    case 'product':
      return (
        <article class="card card-product" data-testid="card">
          {card.image && <img src={card.image} alt="" referrerpolicy="no-referrer" loading="lazy" />}
          <span class="card-kind">{t('product')}</span>
          {card.url ? (
            <a href={card.url} target="_blank" rel="noopener noreferrer nofollow" class="card-title">
              {card.title}
            </a>
          ) : (
            <strong class="card-title">{card.title}</strong>
          )}
          {card.priceFen !== undefined && (
            <p class="price">
              {t('price')}: {formatFen(card.priceFen)}
            </p>
          )}
          {card.description && <p>{card.description}</p>}
          <span class="card-host">{t('appCard', { app: card.app })}</span>
        </article>
      );
    case 'app':
      return (
        <article class="card card-app" data-testid="card">
          <strong class="card-title">{card.title}</strong>
          {card.lines.map((line, i) => (
            <p key={i}>{line}</p>
          ))}
          {card.url && (
            <a href={card.url} target="_blank" rel="noopener noreferrer nofollow">
              {t('open')}
            </a>
          )}
          <span class="card-host">{t('appCard', { app: card.app })}</span>
        </article>
      );
    default:
      return <span class="text">{card.text || t('unsupported')}</span>;
  }
}
