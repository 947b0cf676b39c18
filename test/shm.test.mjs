// The shared-memory transport's own behaviour, with real processes: discovery between programs
// started separately, kill -9, stale and duplicate ids, the bus directory's checks, a corrupt
// ring, fds after churn, and large messages.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { open } from 'shmbus';
import { program, shmRuns } from './helpers/spawn.mjs';

const FIXTURE = fileURLToPath(new URL('./fixtures/shm-member.mjs', import.meta.url));
const isRoot = process.getuid?.() === 0;
let root;
let runs = 0;
const children = new Set();

const shmWorks = shmRuns;
const busName = () => `t${process.pid}_${++runs}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Starts test/fixtures/shm-member.mjs as a program of its own. */
function member(bus, id, extraEnv = {}) {
  const m = program(FIXTURE, { args: [bus, String(id)], env: { SHMBUS_DIR: root, ...extraEnv } });
  children.add(m);
  m.exited.then(() => children.delete(m));
  const line = m.line;
  m.line = (pred, timeout = 5000) => line(pred, timeout);
  return m;
}

async function joined(bus, id, extraEnv) {
  const m = member(bus, id, extraEnv);
  const first = await m.line((l) => 'ready' in l || 'openError' in l);
  if ('openError' in first) throw new Error(`member ${id} did not open: ${first.openError} ${first.message}`);
  return m;
}

function nextEvent(bus, name, timeout = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${name} in ${timeout} ms`)), timeout);
    bus.on(name, function once(value) {
      clearTimeout(timer);
      bus.off(name, once);
      resolve(value);
    });
  });
}

const openShm = (name, id, shm = {}) => open({ name, id, transport: 'shm', shm: { dir: root, ...shm } });
const fdCount = () => fs.readdirSync('/proc/self/fd').length;
const ringMappings = () => fs.readFileSync('/proc/self/maps', 'utf8').split('\n').filter((l) => l.includes('shmbus-ring')).length;
const listDevShm = () => (fs.existsSync('/dev/shm') ? fs.readdirSync('/dev/shm').sort() : []);

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-test-'));
  fs.chmodSync(root, 0o700);
});

after(() => {
  for (const m of children) m.kill('SIGKILL');
  fs.rmSync(root, { recursive: true, force: true });
});

describe('shm transport', async () => {
  test('programs started separately find each other by bus name, and messages of 16 MiB arrive whole', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const a = await joined(name, 1);
    const b = await joined(name, 'b');
    assert.deepEqual(b.lines[0].peers, [1]);
    await a.line((l) => l.join === 'b');

    const bus = await openShm(name, 'tester');
    assert.equal(bus.transport, 'shm');
    assert.deepEqual(bus.peers(), [1, 'b']);
    assert.equal(await bus.request('echo', 'hi', { to: 'b', timeout: 5000 }), 'hi');

    const big = Buffer.alloc(16 * 2 ** 20);
    for (let i = 0; i < big.length; i += 4096) big.writeUInt32LE(i, i);
    const back = await bus.request('echo', big, { to: 1, timeout: 20_000 });
    assert.ok(Buffer.isBuffer(back) || back instanceof Uint8Array);
    assert.equal(Buffer.compare(Buffer.from(back), big), 0);

    // Many small messages keep their order.
    const got = [];
    const all = new Promise((resolve) =>
      bus.on('back', (n) => {
        got.push(n);
        if (got.length === 2000) resolve();
      }),
    );
    for (let i = 0; i < 2000; i++) {
      await bus.request('sendBack', i, { to: 'b', timeout: 5000 });
    }
    await all;
    assert.deepEqual(got, Array.from({ length: 2000 }, (_, i) => i));

    await bus.close();
    a.child.kill('SIGTERM');
    b.child.kill('SIGTERM');
    await Promise.all([a.exited, b.exited]);
    assert.equal(fs.existsSync(path.join(root, name)), false, 'members leave no socket or lock file behind, and the last one out no bus directory');
  });

  test('never spinning (spinUs 0) and the smallest ring (4 KiB): order kept, 1 MiB messages whole', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const env = { SHM_SPIN_US: '0', SHM_RING_SIZE: '4096' };
    const a = await joined(name, 'a', env);
    const bus = await openShm(name, 'tester', { spinUs: 0, ringSize: 4096 });
    const big = Buffer.alloc(2 ** 20);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE(i, i);
    for (let round = 0; round < 3; round++) {
      const back = await bus.request('echo', big, { to: 'a', timeout: 10_000 });
      assert.equal(Buffer.compare(Buffer.from(back), big), 0);
    }
    const got = [];
    const all = new Promise((resolve) => bus.on('back', (n) => got.push(n) === 3000 && resolve()));
    // Sent without waiting: most of them queue outside the 4 KiB ring.
    await Promise.all(Array.from({ length: 3000 }, (_, i) => bus.request('sendBack', i, { to: 'a', timeout: 20_000 })));
    await all;
    assert.deepEqual(got, Array.from({ length: 3000 }, (_, i) => i));
    await bus.close();
    a.child.kill('SIGKILL');
    await a.exited;
  });

  test('six programs started at the same moment all link up with each other', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const bus = await openShm(name, 'tester');
    const ids = [1, 2, 3, 'w4', 'w5', 'w6'];
    const members = await Promise.all(ids.map((id) => joined(name, id)));
    for (let i = 0; i < 150 && bus.peers().length < ids.length; i++) await sleep(20);
    assert.deepEqual(bus.peers(), ids);
    for (const id of ids) {
      let peers;
      for (let i = 0; i < 150; i++) {
        peers = await bus.request('peers', null, { to: id, timeout: 5000 });
        if (peers.length === ids.length) break;
        await sleep(20);
      }
      const expected = [...ids.filter((x) => x !== id), 'tester'];
      const order = (x, y) => (typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : typeof x === 'number' ? -1 : 1);
      assert.deepEqual(peers, expected.sort(order), `peers of ${id}`);
    }
    await bus.close();
    for (const m of members) m.child.kill('SIGKILL');
    await Promise.all(members.map((m) => m.exited));
  });

  test('kill -9 of a member: survivors see it leave at once, its socket goes, its id can rejoin', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const shmBefore = listDevShm();
    const bus = await openShm(name, 'survivor');
    const other = await joined(name, 'other');
    const victim = await joined(name, 'victim');
    await other.line((l) => l.join === 'victim');
    assert.deepEqual(bus.peers(), ['other', 'victim']);

    const pending = bus.request('hang', null, { to: 'victim', timeout: 30_000 });
    const left = nextEvent(bus, 'peer:leave');
    await sleep(50);
    const killedAt = Date.now();
    victim.child.kill('SIGKILL');
    await assert.rejects(pending, { code: 'ERR_SHMBUS_PEER_GONE' });
    assert.equal(await left, 'victim');
    assert.ok(Date.now() - killedAt < 1000, `left after ${Date.now() - killedAt} ms`);
    await other.line((l) => l.leave === 'victim');
    const sock = path.join(root, name, 'victim.sock');
    for (let i = 0; i < 100 && fs.existsSync(sock); i++) await sleep(20);
    assert.equal(fs.existsSync(sock), false, 'the dead member socket file is removed');
    assert.equal(fs.existsSync(path.join(root, name, 'victim.lock')), false, 'and its lock file');

    const joinedAgain = nextEvent(bus, 'peer:join');
    const again = await joined(name, 'victim');
    assert.equal(await joinedAgain, 'victim');
    assert.equal(await bus.request('echo', 5, { to: 'victim', timeout: 5000 }), 5);

    await bus.close();
    for (const m of [other, again]) m.child.kill('SIGKILL');
    await Promise.all([other.exited, again.exited]);
    assert.deepEqual(listDevShm(), shmBefore, 'nothing left in /dev/shm');
  });

  test('messages that fit in the ring, sent just before process.exit(), all arrive in order', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const bus = await openShm(name, 'taker');
    t.after(() => bus.close());
    const got = [];
    bus.on('burst', (data) => got.push(data));
    for (const [count, code] of [[200, 0], [3, 7]]) {
      got.length = 0;
      const sender = await joined(name, 'sender');
      const left = nextEvent(bus, 'peer:leave');
      bus.sendMessage('burstExit', { count, code }, 'sender');
      assert.equal((await sender.exited).code, code);
      assert.equal(await left, 'sender');
      assert.deepEqual(got.map((d) => d.seq), [...Array(count).keys()], `all ${count} messages, in order`);
      assert.ok(got.every((d) => (d.seq % 50 === 49) === (d.big?.length === 5000)), 'each with its body');
    }
  });

  test("a dead member's stale socket is taken over; a live member's id is refused", async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const lone = await joined(name, 'lone');
    lone.child.kill('SIGKILL'); // no survivor removes its socket
    await lone.exited;
    const sock = path.join(root, name, 'lone.sock');
    assert.ok(fs.existsSync(sock));
    const bus = await openShm(name, 'lone');
    assert.deepEqual(bus.peers(), []);

    await assert.rejects(openShm(name, 'lone'), { code: 'ERR_SHMBUS_DUPLICATE_ID' });
    const live = await joined(name, 7);
    const dup = member(name, 7);
    const line = await dup.line((l) => 'openError' in l || 'ready' in l);
    assert.equal(line.openError, 'ERR_SHMBUS_DUPLICATE_ID');
    assert.equal(await bus.request('echo', 'still', { to: 7, timeout: 5000 }), 'still');
    await bus.close();
    live.child.kill('SIGKILL');
    await live.exited;
  });

  test('the bus directory must be a real directory of ours with mode 0700', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const dir = path.join(root, name);
    // Ours: the message may say to remove it; another user's: never.
    const refused = (cause, removable) => (err) => {
      assert.equal(err.code, 'ERR_SHMBUS_TRANSPORT');
      assert.ok(err.message.startsWith(`the bus directory ${dir} `), err.message);
      assert.match(err.message, cause);
      const fix = '; choose a directory of your own for shm.dir or SHMBUS_DIR';
      assert.ok(err.message.endsWith(removable ? `${fix}; if ${dir} is a leftover of yours, removing it is fine too` : fix), err.message);
      return true;
    };
    const target = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-target-'));
    fs.symlinkSync(target, dir);
    await assert.rejects(openShm(name, 1), refused(/ is a symlink, and shmbus follows none /, true));
    fs.unlinkSync(dir);
    fs.rmSync(target, { recursive: true });
    fs.writeFileSync(dir, '');
    await assert.rejects(openShm(name, 1), refused(/ is not a directory;/, true));
    if (isRoot) {
      fs.chownSync(dir, 12345, 12345);
      await assert.rejects(openShm(name, 1), refused(/ is not a directory \(it belongs to uid 12345, not 0\);/, false));
    }
    fs.unlinkSync(dir);

    fs.mkdirSync(path.join(root, name), { mode: 0o755 });
    fs.chmodSync(path.join(root, name), 0o755);
    await assert.rejects(openShm(name, 1), (err) => err.code === 'ERR_SHMBUS_TRANSPORT' && /mode 755/.test(err.message));
    fs.chmodSync(path.join(root, name), 0o700);
    if (isRoot) {
      fs.chownSync(path.join(root, name), 12345, 12345);
      await assert.rejects(openShm(name, 1), refused(/ belongs to uid 12345, not 0, and shmbus uses only its own user's directories /, false));
      fs.chownSync(path.join(root, name), 0, 0);
    }
    const bus = await openShm(name, 1);
    await bus.close();
  });

  test('bad shm options are refused', async () => {
    for (const shm of [{ ringSize: 1000 }, { ringSize: 2 ** 31 }, { spinUs: -1 }, { spinUs: 1.5 }, { dir: '' }, { nope: 1 }]) {
      await assert.rejects(open({ name: busName(), id: 1, transport: 'shm', shm }), { code: 'ERR_SHMBUS_INVALID_ARG' }, JSON.stringify(shm));
    }
    await assert.rejects(open({ name: busName(), id: 1, transport: 'shm', shm: { nope: 1 } }), {
      code: 'ERR_SHMBUS_INVALID_ARG',
      message: 'unknown shm option "nope"; the shm options are dir, ringSize, spinUs',
    });
  });

  test('a corrupt ring closes that one peer with an error; nothing crashes', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    if (!isRoot || !fs.existsSync('/proc/self/map_files')) return t.skip('scribbling on a mapping needs /proc/self/map_files (root)');
    const name = busName();
    const bus = await openShm(name, 'tester');
    const bad = await joined(name, 'bad');
    const good = await joined(name, 'good');
    await bad.line((l) => l.join === 'good');
    const errors = [];
    bus.on('error', (err) => errors.push(err));
    const left = nextEvent(bus, 'peer:leave');
    bus.sendMessage('corrupt', null, 'bad');
    assert.equal(await left, 'bad');
    // Whichever side reads the damage first closes the link; either way this side hears of it.
    const badSaw = () => bad.lines.some((l) => l.error === 'ERR_SHMBUS_PROTOCOL' && /corrupt/.test(l.message));
    for (let i = 0; i < 100 && !errors.length && !badSaw(); i++) await sleep(20);
    assert.ok(errors.some((e) => e.code === 'ERR_SHMBUS_PROTOCOL' && /corrupt/.test(e.message)) || badSaw(), JSON.stringify({ here: errors.map((e) => e.message), bad: bad.lines }));
    assert.deepEqual(bus.peers(), ['good']);
    assert.equal(await bus.request('echo', 'ok', { to: 'good', timeout: 5000 }), 'ok');
    await bus.close();
    for (const m of [bad, good]) m.child.kill('SIGKILL');
    await Promise.all([bad.exited, good.exited]);
  });

  test('fds and ring mappings come back to the baseline after join/leave churn', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const bus = await openShm(name, 'base');
    const peer = await joined(name, 'peer');
    const baseline = await bus.request('fds', null, { to: 'peer', timeout: 5000 });
    const fdsBefore = fdCount();
    const ringsBefore = ringMappings();
    for (let i = 0; i < 10; i++) {
      const churn = await openShm(name, `churn${i % 3}`);
      await churn.request('echo', i, { to: 'peer', timeout: 5000 });
      await churn.close();
      const m = await joined(name, 'kid');
      await bus.request('echo', i, { to: 'kid', timeout: 5000 });
      m.child.kill(i % 2 ? 'SIGKILL' : 'SIGTERM');
      await m.exited;
    }
    for (let i = 0; i < 100 && bus.peers().length > 1; i++) await sleep(20);
    assert.deepEqual(bus.peers(), ['peer']);
    await sleep(50);
    assert.equal(fdCount(), fdsBefore);
    assert.equal(ringMappings(), ringsBefore);
    assert.deepEqual(await bus.request('fds', null, { to: 'peer', timeout: 5000 }), baseline);
    await bus.close();
    assert.equal(ringMappings(), 0);
    peer.child.kill('SIGKILL');
    await peer.exited;
  });

  test('a member in a worker thread: terminate() takes it off the bus', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const name = busName();
    const p = program(new URL('./fixtures/shm-worker.mjs', import.meta.url), { args: [name], env: { SHMBUS_DIR: root } });
    const { code } = await p.exited;
    assert.equal(code, 0, p.describe());
    assert.deepEqual(p.lines, [{ echo: 'hi', gone: 'w', files: ['main.lock', 'main.sock'] }]);
  });

  test('worker threads terminate()d while messages stream to them: the process lives through every one', { timeout: 120_000 }, async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const rounds = 40;
    const p = program(new URL('./fixtures/shm-worker-churn.mjs', import.meta.url), { args: [busName(), String(rounds)], env: { SHMBUS_DIR: root } });
    const { code } = await p.exited;
    assert.equal(code, 0, p.describe());
    assert.deepEqual(p.lines, [{ done: rounds, peers: [] }]);
  });

  test('an open bus keeps its process alive until unref()', async (t) => {
    if (!(await shmWorks())) return t.skip('the shm transport does not run here');
    const script = (unref) =>
      `import('shmbus').then(async ({ open }) => { const bus = await open({ name: 'alive${process.pid}', id: 'x', transport: 'shm', shm: { dir: ${JSON.stringify(root)} } }); ${unref ? 'bus.unref();' : 'setTimeout(() => bus.close(), 300);'} })`;
    for (const unref of [true, false]) {
      const env = { ...process.env };
      delete env.NODE_TEST_CONTEXT;
      const started = Date.now();
      const child = spawn(process.execPath, ['-e', script(unref)], { env, stdio: 'inherit' });
      const code = await new Promise((resolve) => child.on('exit', resolve));
      assert.equal(code, 0);
      const ms = Date.now() - started;
      if (!unref) assert.ok(ms >= 300, `exited after ${ms} ms, before close()`);
    }
  });
});
