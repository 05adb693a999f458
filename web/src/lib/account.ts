// Sign-up (phone verified first, account created after), sign-in by user name or phone, all through
// matrix-js-sdk's Client-Server API calls.
import { createClient, Method, type MatrixClient } from 'matrix-js-sdk';
import type { Session } from './session';

const DEVICE_NAME = 'Laiwang web';

export function anonymousClient(baseUrl: string): MatrixClient {
  return createClient({ baseUrl });
}

export function newClientSecret(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export interface PhoneChallenge {
  sid: string;
  clientSecret: string;
  msisdn: string;
  sendAttempt: number;
}

/** Asks the server to text a code to a Chinese mobile number (sendAttempt > previous resends one). */
export async function requestPhoneCode(
  client: MatrixClient,
  phone: string,
  previous?: PhoneChallenge,
): Promise<PhoneChallenge> {
  const clientSecret = previous?.clientSecret ?? newClientSecret();
  const sendAttempt = (previous?.sendAttempt ?? 0) + 1;
  const answer = await client.requestAdd3pidMsisdnToken('CN', phone.trim(), clientSecret, sendAttempt);
  return { sid: answer.sid, clientSecret, msisdn: answer.msisdn, sendAttempt };
}

async function submitCode(client: MatrixClient, challenge: PhoneChallenge, code: string): Promise<void> {
  // The same-origin endpoint (not the absolute submit_url), so the CSP's connect-src 'self' holds.
  await client.http.request(Method.Post, '/account/3pid/msisdn/submit_token', undefined, {
    sid: challenge.sid,
    client_secret: challenge.clientSecret,
    token: code.trim(),
  });
}

export async function signUp(
  baseUrl: string,
  username: string,
  password: string,
  challenge: PhoneChallenge,
  code: string,
): Promise<Session> {
  const anonymous = anonymousClient(baseUrl);
  await submitCode(anonymous, challenge, code);
  const answer = await anonymous.registerRequest({
    username: username.trim(),
    password,
    auth: { type: 'm.login.dummy' },
    initial_device_display_name: DEVICE_NAME,
  });
  if (!answer.access_token || !answer.device_id) throw new Error('registration gave no session');
  const session = { userId: answer.user_id, deviceId: answer.device_id, accessToken: answer.access_token };
  const signedIn = createClient({ baseUrl, ...session });
  await signedIn.addThreePidOnly({ sid: challenge.sid, client_secret: challenge.clientSecret });
  return session;
}

/** A user name, a full Matrix id, or a Chinese mobile number (11 digits, optionally +86). */
export function loginIdentifier(input: string): Record<string, string> {
  const value = input.trim();
  const digits = value.replace(/[\s-]/g, '');
  if (/^(\+?86)?1\d{10}$/.test(digits)) {
    return { type: 'm.id.phone', country: 'CN', phone: digits.replace(/^\+?86/, '') };
  }
  return { type: 'm.id.user', user: value };
}

export async function signIn(baseUrl: string, user: string, password: string): Promise<Session> {
  const answer = await anonymousClient(baseUrl).loginRequest({
    type: 'm.login.password',
    identifier: loginIdentifier(user),
    password,
    initial_device_display_name: DEVICE_NAME,
  } as Parameters<MatrixClient['loginRequest']>[0]);
  return { userId: answer.user_id, deviceId: answer.device_id, accessToken: answer.access_token };
}
