// Default ids across hosts: two processes with one host name and one pid (containers share pid 1),
// simulated as root by pid namespaces of their own (unshare --pid), get different default ids on
// nats and hybrid, and the same <host>-<pid> as ever on shm. Skipped, saying why, where unshare
// or nats-server is missing; under CI (env CI=true) that is a failure.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { freePort, natsServerPath, startNatsServer, stopNatsServer } from './helpers/spawn.mjs';

const FIXTURE = fileURLToPath(new URL('./fixtures/default-id.mjs', import.meta.url));

function unsharePidWorks() {
  if (process.getuid?.() !== 0) return 'not root: unshare --pid needs root';
  const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', 'sh', '-c', 'test $$ = 1'], { encoding: 'utf8' });
  if (r.error) return `unshare can't run: ${r.error.message}`;
  if (r.status !== 0) return `unshare --pid --fork --mount-proc is not allowed here: ${(r.stderr || '').trim()}`;
  return false;
}

const skip = !natsServerPath() ? 'nats-server is not installed: install it (apt-get install nats-server)' : unsharePidWorks();
if (skip && process.env.CI === 'true') test('unshare --pid and nats-server are available (required under CI)', () => assert.fail(skip));

/** The default id of a process that is pid 1 in a pid namespace of its own. */
function defaultIdAsPid1(transport, env) {
  const childEnv = { ...process.env, ...env, TRANSPORT: transport };
  for (const key of ['SHMBUS_ID', 'NODE_APP_INSTANCE', 'SHMBUS_TRANSPORT', 'NODE_TEST_CONTEXT']) delete childEnv[key];
  const r = spawnSync('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, FIXTURE], { encoding: 'utf8', env: childEnv, timeout: 20_000 });
  assert.equal(r.status, 0, `exit ${r.status ?? r.signal}\n${r.stdout}\n${r.stderr}`);
  return JSON.parse(r.stdout.trim().split('\n').at(-1));
}

test('two processes with one host name and pid 1, in pid namespaces of their own: different default ids on nats and hybrid, <host>-<pid> on shm', { skip, timeout: 60_000 }, async () => {
  const port = await freePort();
  const server = await startNatsServer(port);
  try {
    const env = { BUS: `ids${process.pid}`, NATS_URL: `nats://127.0.0.1:${port}` };
    let spanning;
    for (const transport of ['nats', 'hybrid']) {
      const [a, b] = [defaultIdAsPid1(transport, env), defaultIdAsPid1(transport, env)];
      assert.deepEqual([a.pid, b.pid, a.transport, b.transport], [1, 1, transport, transport]);
      assert.match(a.id, /^[A-Za-z_][A-Za-z0-9_.-]*-[0-9a-f]{6}-1$/, transport);
      assert.match(b.id, /^[A-Za-z_][A-Za-z0-9_.-]*-[0-9a-f]{6}-1$/, transport);
      assert.notEqual(a.id, b.id, `${transport}: two processes that are pid 1 of one host name`);
      spanning = a.id;
    }
    const plain = defaultIdAsPid1('shm', env);
    assert.equal(plain.id, spanning.replace(/-[0-9a-f]{6}-1$/, '-1'), 'on shm the default id is <host>-<pid>');
  } finally {
    await stopNatsServer(server);
  }
});
