// The signed-in session lives in localStorage (never in a URL), so a reload stays signed in.
export interface Session {
  userId: string;
  deviceId: string;
  accessToken: string;
}

const KEY = 'laiwang.session';

export function loadSession(storage: Storage = localStorage): Session | null {
  try {
    const value = JSON.parse(storage.getItem(KEY) ?? 'null') as Partial<Session> | null;
    if (value && typeof value.userId === 'string' && typeof value.deviceId === 'string' && typeof value.accessToken === 'string') {
      return { userId: value.userId, deviceId: value.deviceId, accessToken: value.accessToken };
    }
  } catch {
    // a damaged entry is the same as none
  }
  return null;
}

export function saveSession(session: Session, storage: Storage = localStorage): void {
  storage.setItem(KEY, JSON.stringify(session));
}

export function clearSession(storage: Storage = localStorage): void {
  storage.removeItem(KEY);
}
