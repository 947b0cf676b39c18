// Members of an shm bus that join at the same moment: every trial starts a few programs at once,
// with the machine's other core busy, and each must see every other member, both ways, and get a
// message from each. Also: a connection that never sends its handshake is closed and costs the
// member nothing after. SHMBUS_TEST_JOIN_TRIALS sets the number of trials (40 by default; run
// 200+ by hand after a change to the handshake).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { open } from 'shmbus';
import { program, busyCore, shmRuns } from './helpers/spawn.mjs';

const MEMBER = new URL('./fixtures/join-member.mjs', import.meta.url);
const TRIALS = Number(process.env.SHMBUS_TEST_JOIN_TRIALS || 40);
const noShm = (await shmRuns()) ? false : 'the shm transport does not run here';
let root;
let buses = 0;
const busName = () => `j${process.pid}_${++buses}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-join-'));
  fs.chmodSync(root, 0o700);
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** Starts `ids` as programs at the same moment; resolves each one's report. */
async function trial(ids) {
  const name = busName();
  const at = Date.now() + 1500; // every member has loaded shmbus by then, even on a busy machine
  const members = ids.map((id) => program(MEMBER, { args: [name, String(id), ids.join(','), String(at)], env: { SHMBUS_DIR: root } }));
  try {
    return await Promise.all(members.map((m) => m.line((l) => 'id' in l, 20_000)));
  } finally {
    for (const m of members) m.kill('SIGTERM');
    await Promise.all(members.map((m) => m.exited));
  }
}

test(`${TRIALS} trials of 4 members started at once, the other core busy: each sees and hears every other`, { skip: noShm, timeout: 60_000 + TRIALS * 5_000 }, async () => {
  const ids = [1, 2, 'w3', 'w4'];
  const idle = busyCore();
  const failures = [];
  try {
    for (let i = 0; i < TRIALS; i++) {
      const reports = await trial(ids);
      for (const r of reports) {
        const others = ids.filter((x) => x !== r.id);
        const ok = r.failed === undefined && r.errors.length === 0 && others.every((o) => r.peers.includes(o) && r.got.includes(o));
        if (!ok) failures.push({ trial: i, ...r });
      }
    }
  } finally {
    idle();
  }
  assert.deepEqual(failures, [], `members that did not link with every other one, of ${TRIALS} trials`);
});

test('a connection that never sends its handshake is closed after 5 s; the member goes on as before', { skip: noShm || (spawnSync('python3', ['-c', '1']).status !== 0 && 'needs python3 for a raw SOCK_SEQPACKET client'), timeout: 60_000 }, async () => {
  const name = busName();
  const bus = await open({ name, id: 'host', transport: 'shm', shm: { dir: root } });
  const fds = () => fs.readdirSync('/proc/self/fd').length;
  const before = fds();
  // 30 silent connections to the member's socket, held open until the member closes them.
  const script = `
import socket, sys, time
socks = []
for _ in range(30):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    s.connect(sys.argv[1])
    socks.append(s)
print('connected', flush=True)
deadline = time.time() + 30
closed = 0
for s in socks:
    s.settimeout(max(0.1, deadline - time.time()))
    try:
        if s.recv(1) == b'':
            closed += 1
    except OSError:
        pass
print('closed', closed, flush=True)
`;
  // Not spawnSync: the member under test runs on this process's event loop.
  const py = await new Promise((resolve) => {
    const child = spawn('python3', ['-c', script, path.join(root, name, 'host.sock')], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 40_000 });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (out += d));
    child.on('close', () => resolve(out));
  });
  assert.match(py, /connected\nclosed 30\n/, `python: ${py}`);
  for (let i = 0; i < 50 && fds() > before; i++) await sleep(20);
  assert.ok(fds() <= before, `the member holds no fd for them (${fds()} open, ${before} before)`);
  // And a member joins and talks as usual.
  const other = await open({ name, id: 'guest', transport: 'shm', shm: { dir: root } });
  bus.handle('echo', (d) => d);
  assert.equal(await other.request('echo', 'hi', { to: 'host', timeout: 5000 }), 'hi');
  await other.close();
  await bus.close();
});
