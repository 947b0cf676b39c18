// shmbus under Bun (npm's @oven/bun-linux-x64, which .ci/run installs): importing it works, the
// v8 codec and shm say why they can't run there, and a Bun process and a Node.js process open,
// send and request on one bus over the transports that run under both. Skipped, saying so, where
// no Bun is installed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import { fileURLToPath } from 'node:url';
import { resultOf, transportsUnderTest } from './helpers/run.mjs';

/** Bun: SHMBUS_TEST_BUN, else the one .ci/run installs, else `bun` on the PATH. */
function findBun() {
  const local = fileURLToPath(new URL('../.ci/bun/node_modules/@oven/bun-linux-x64/bin/bun', import.meta.url));
  for (const candidate of [process.env.SHMBUS_TEST_BUN, local, 'bun']) {
    if (!candidate) continue;
    if (candidate !== 'bun' && !fs.existsSync(candidate)) continue;
    const r = spawnSync(candidate, ['--version'], { encoding: 'utf8' });
    if (r.status === 0) return { path: candidate, version: r.stdout.trim() };
  }
  return undefined;
}

const bun = findBun();
const skip = bun ? false : 'Bun is not installed: set SHMBUS_TEST_BUN, or `npm install --prefix .ci/bun @oven/bun-linux-x64` (as .ci/run does)';
const env = { BUN: bun?.path ?? '' };

test('under Bun: the import works, the v8 codec and shm say why not, auto runs on process with one warning', { skip }, async (t) => {
  t.diagnostic(`bun ${bun.version} at ${bun.path}`);
  // (run() starts programs under Node: this one is started under Bun)
  const probe = spawnSync(bun.path, [fileURLToPath(new URL('./fixtures/bun.mjs', import.meta.url)), 'probe'], {
    encoding: 'utf8',
    timeout: 20_000,
    env: { ...process.env, NODE_TEST_CONTEXT: undefined, SHMBUS_TRANSPORT: '', SHMBUS_TEST_BUS: `bunprobe${process.pid}` },
  });
  assert.equal(probe.status, 0, `${probe.stdout}\n${probe.stderr}`);
  const line = probe.stdout.split('\n').find((l) => l.startsWith('{"result"'));
  const out = JSON.parse(line).result;
  assert.equal(out.runtime, 'bun');
  assert.equal(out.v8.code, 'ERR_SHMBUS_INVALID_ARG');
  assert.match(out.v8.message, /^the v8 codec can't run here: it needs V8's serializer, and this is Bun .*; choose codec 'json' or 'raw'/);
  assert.equal(out.transport, 'process');
  assert.deepEqual(out.echoed, { n: 1 });
  assert.equal(out.warnings.length, 1, out.warnings.join('\n'));
  assert.match(out.warnings[0], /^SHMBUS_FALLBACK: .*needs Node's libuv event loop, which Bun .* does not provide/);
});

for (const transport of (await transportsUnderTest()).filter((t) => t !== 'shm')) {
  test(`${transport}: a Node.js process and a Bun process open one bus, send and request both ways`, { skip }, async () => {
    const r = await resultOf('bun.mjs', { args: ['node'], env, transport });
    assert.equal(r.transport, transport);
    assert.equal(r.joined, 'resolved');
    assert.deepEqual(r.who, { value: { runtime: `bun ${bun.version}`, transport } });
    assert.deepEqual(r.pong, { data: 'hi back', from: 'bun' });
    assert.deepEqual(r.sum, { data: { value: 5 }, from: 'bun' }, 'the Bun member asked the Node member');
    assert.equal(r.childExit, 0, 'the Bun member left and ended by itself');
  });
}
