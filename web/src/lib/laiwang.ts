// Typed calls to the Laiwang extensions. `paths` is generated from gateway/openapi.json at build time
// (npm run web:types), so a changed contract breaks the type check instead of the user.
import createClient, { type Middleware } from 'openapi-fetch';
import type { paths } from '../../gen/laiwang';
import { ApiError } from './errors';

export type LaiwangApi = ReturnType<typeof createClient<paths>>;

export function laiwangApi(baseUrl: string, token: () => string | null): LaiwangApi {
  const api = createClient<paths>({ baseUrl });
  const auth: Middleware = {
    onRequest({ request }) {
      const value = token();
      // The token travels in a header only, never in a URL.
      if (value) request.headers.set('Authorization', `Bearer ${value}`);
      return request;
    },
  };
  api.use(auth);
  return api;
}

interface Answer<T> {
  data?: T;
  error?: unknown;
  response: Response;
}

/** The answer's data, or an ApiError carrying the Matrix errcode (never the raw body). */
export async function ok<T>(call: Promise<Answer<T>>): Promise<T> {
  const { data, error, response } = await call;
  if (error !== undefined || !response.ok) {
    const body = (error ?? {}) as { errcode?: unknown; retry_after_ms?: unknown };
    const errcode = typeof body.errcode === 'string' ? body.errcode : `HTTP_${response.status}`;
    const retry = typeof body.retry_after_ms === 'number' ? body.retry_after_ms : undefined;
    throw new ApiError(errcode, response.status, retry);
  }
  return data as T;
}
