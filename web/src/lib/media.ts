// Pictures in the timeline through authenticated media (/_matrix/client/v1/media): the browser
// cannot put an Authorization header on an <img src>, so the client fetches the thumbnail with the
// header and shows it from a blob: URL (the gateway's CSP allows blob: images, nothing else).
import { useEffect, useState } from 'preact/hooks';

/** `mxc://server/id` -> [server, id], or null for anything else (no other scheme is ever fetched). */
export function parseMxc(url: unknown): [string, string] | null {
  if (typeof url !== 'string') return null;
  const match = /^mxc:\/\/([A-Za-z0-9.:[\]-]+)\/([A-Za-z0-9_-]+)$/.exec(url);
  return match ? [match[1], match[2]] : null;
}

/** The authenticated thumbnail path for an mxc URL (scaled to fit `size`), or null. */
export function thumbnailPath(mxc: unknown, size = 640): string | null {
  const parts = parseMxc(mxc);
  if (!parts) return null;
  const [server, id] = parts.map(encodeURIComponent);
  return `/_matrix/client/v1/media/thumbnail/${server}/${id}?width=${size}&height=${size}&method=scale`;
}

export function downloadPath(mxc: unknown): string | null {
  const parts = parseMxc(mxc);
  if (!parts) return null;
  const [server, id] = parts.map(encodeURIComponent);
  return `/_matrix/client/v1/media/download/${server}/${id}`;
}

export type MediaState = { url: string } | { error: true } | null;

/** A blob: URL of the picture behind `mxc` (fetched with the access token), revoked when unused. */
export function useMediaUrl(baseUrl: string, token: string, mxc: unknown, size = 640): MediaState {
  const [state, setState] = useState<MediaState>(null);
  const path = thumbnailPath(mxc, size);
  useEffect(() => {
    if (!path) {
      setState({ error: true });
      return;
    }
    let url = '';
    let live = true;
    void (async () => {
      try {
        const answer = await fetch(`${baseUrl}${path}`, { headers: { Authorization: `Bearer ${token}` } });
        if (!answer.ok || !(answer.headers.get('Content-Type') ?? '').startsWith('image/')) throw new Error(String(answer.status));
        url = URL.createObjectURL(await answer.blob());
        if (live) setState({ url });
        else URL.revokeObjectURL(url);
      } catch {
        if (live) setState({ error: true });
      }
    })();
    return () => {
      live = false;
      if (url) URL.revokeObjectURL(url);
    };
  }, [path, token]);
  return state;
}

const PICTURE_TYPES = new Set(['image/jpeg', 'image/png', 'image/gif', 'image/webp']);

export function isPicture(file: { type: string }): boolean {
  return PICTURE_TYPES.has(file.type);
}

/** The m.image content for an uploaded picture. */
export function imageContent(mxc: string, file: { name: string; type: string; size: number }, w?: number, h?: number): Record<string, unknown> {
  const info: Record<string, unknown> = { mimetype: file.type, size: file.size };
  if (w && h) Object.assign(info, { w, h });
  return { msgtype: 'm.image', body: file.name.slice(0, 255) || 'picture', url: mxc, info };
}
