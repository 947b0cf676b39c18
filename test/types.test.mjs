// The published types, as a TypeScript user meets them: test/types/usage.mts must compile against
// dist/index.d.ts, and each of its `@ts-expect-error` lines must be an error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('..', import.meta.url));

test('the types: typed transport options, reserved-event listeners, ids as numbers or strings', { timeout: 120_000 }, () => {
  const tsc = fileURLToPath(new URL('../node_modules/typescript/bin/tsc', import.meta.url));
  const r = spawnSync(process.execPath, [tsc, '-p', 'test/types'], { cwd: repo, encoding: 'utf8' });
  assert.equal(r.status, 0, `tsc -p test/types:\n${r.stdout}${r.stderr}`);
});
