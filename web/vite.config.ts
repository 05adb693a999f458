// Vite builds the SPA from web/ into web/dist, which the gateway serves at `/`; Vitest runs the unit
// tests in web/tests. `npm run web:dev` proxies the API to a gateway started by `make run`.
import { fileURLToPath } from 'node:url';
import preact from '@preact/preset-vite';
import { defineConfig } from 'vitest/config';

const root = fileURLToPath(new URL('.', import.meta.url));
const gateway = process.env.LAIWANG_GATEWAY ?? 'http://127.0.0.1:8008';

export default defineConfig({
  root,
  plugins: [preact()],
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // The gateway's CSP allows no inline script or style, so nothing may be inlined as a data: URL.
    assetsInlineLimit: 0,
    chunkSizeWarningLimit: 2000,
    sourcemap: false,
  },
  server: {
    proxy: { '/_matrix': gateway, '/_laiwang': gateway, '/healthz': gateway },
  },
  test: {
    include: ['tests/**/*.test.ts'],
    environment: 'node',
  },
});
