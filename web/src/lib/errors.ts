// Server errors in words: a Matrix error body ({errcode, error, retry_after_ms}) becomes a sentence in
// the user's language; raw JSON is never shown.
import { type Key, t } from './i18n';
import { en } from './strings-en';

export class ApiError extends Error {
  constructor(
    readonly errcode: string,
    readonly status: number,
    readonly retryAfterMs?: number,
  ) {
    super(errcode);
  }
}

/** An error whose message is already a sentence for the user (the client's own checks). */
export class Words extends Error {}

interface ErrorLike {
  errcode?: unknown;
  httpStatus?: unknown;
  status?: unknown;
  data?: { retry_after_ms?: unknown; errcode?: unknown };
  retry_after_ms?: unknown;
  retryAfterMs?: unknown;
  name?: unknown;
}

/** The errcode carried by an ApiError, a matrix-js-sdk MatrixError, or a plain error body. */
export function errcodeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const e = error as ErrorLike;
  if (typeof e.errcode === 'string') return e.errcode;
  if (typeof e.data?.errcode === 'string') return e.data.errcode;
  return undefined;
}

export function describeError(error: unknown, context: 'login' | 'other' = 'other'): string {
  if (error instanceof Words) return error.message;
  const code = errcodeOf(error);
  if (!code) {
    const name = typeof error === 'object' && error !== null ? (error as ErrorLike).name : undefined;
    if (error instanceof TypeError || name === 'ConnectionError') return t('errorNetwork');
    return t('errorGeneric', { code: '?' });
  }
  if (code === 'M_FORBIDDEN' && context === 'login') return t('M_FORBIDDEN_LOGIN');
  if (code === 'M_LIMIT_EXCEEDED') {
    const e = error as ErrorLike;
    const ms = Number(e.retryAfterMs ?? e.retry_after_ms ?? e.data?.retry_after_ms ?? 1000);
    return t('M_LIMIT_EXCEEDED', { seconds: Math.max(1, Math.ceil(ms / 1000)) });
  }
  if (/^M_[A-Z_]+$/.test(code) && isKey(code)) return t(code);
  return t('errorGeneric', { code });
}

function isKey(code: string): code is Key {
  return Object.hasOwn(en, code);
}
