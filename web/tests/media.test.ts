import { describe, expect, it } from 'vitest';
import { downloadPath, imageContent, isPicture, parseMxc, thumbnailPath } from '../src/lib/media';

describe('authenticated media', () => {
  it('fetches only mxc URLs, through the authenticated v1 paths', () => {
    expect(parseMxc('mxc://laiwang.test/AbC_12-x')).toEqual(['laiwang.test', 'AbC_12-x']);
    expect(thumbnailPath('mxc://laiwang.test:8448/abc', 320)).toBe('/_matrix/client/v1/media/thumbnail/laiwang.test%3A8448/abc?width=320&height=320&method=scale');
    expect(downloadPath('mxc://laiwang.test/abc')).toBe('/_matrix/client/v1/media/download/laiwang.test/abc');
    for (const bad of ['https://evil.example/x.png', 'javascript:alert(1)', 'mxc://host/../../_matrix/x', 'mxc://host/a?b', 42, undefined]) {
      expect(parseMxc(bad)).toBeNull();
      expect(thumbnailPath(bad)).toBeNull();
    }
  });
  it('sends pictures as m.image with their type, size and dimensions', () => {
    const file = { name: 'lake.png', type: 'image/png', size: 1234 };
    expect(isPicture(file)).toBe(true);
    expect(isPicture({ type: 'image/svg+xml' })).toBe(false);
    expect(imageContent('mxc://s/id', file, 320, 200)).toEqual({
      msgtype: 'm.image',
      body: 'lake.png',
      url: 'mxc://s/id',
      info: { mimetype: 'image/png', size: 1234, w: 320, h: 200 },
    });
  });
});
