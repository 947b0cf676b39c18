// Other users: a process running as `nobody` can neither join root's bus nor reach its members,
// and a bus directory that another user owns, that is a symlink or that others may write to is
// refused. Needs root (CI runs as root) to switch uid; skipped otherwise.
import { test, describe, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { open } from 'shmbus';

const NOBODY_FIXTURE = fileURLToPath(new URL('./fixtures/reliability-nobody.mjs', import.meta.url));
const isRoot = process.getuid?.() === 0;
const hasSetpriv = ['/usr/bin/setpriv', '/bin/setpriv'].some((p) => fs.existsSync(p));
const hasPython = fs.existsSync('/usr/bin/python3');
let nobody;
try {
  nobody = isRoot && hasSetpriv ? Number((await run('id', ['-u', 'nobody'])).stdout.trim()) : undefined;
} catch {
  nobody = undefined;
}
const skip = !isRoot ? 'needs root, to run a process as another user (nobody)' : !hasSetpriv ? 'needs setpriv (util-linux)' : !(nobody > 0) ? 'there is no user nobody' : false;

function run(file, args, options = {}) {
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 20_000, killSignal: 'SIGKILL', ...options }, (err, stdout, stderr) => resolve({ err, stdout, stderr }));
  });
}
const asNobody = (file, args) => run('setpriv', ['--reuid=nobody', '--regid=nogroup', '--clear-groups', file, ...args], { env: { PATH: '/usr/bin:/bin', TMPDIR: tmp } });

// A raw client of a member's socket, as nobody: connect, send a well-formed HELLO, read the answer.
const RAW_CLIENT = `
import socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
try:
    s.connect(sys.argv[1])
except OSError as e:
    print('connect errno', e.errno); sys.exit(0)
hello = struct.pack('<8sIIQII64sI160s', b'SHMBUSHS', 1, 1, 4096, 0, 8, b'intruder', 0, b'') + bytes(4)
try:
    s.send(hello)
    print('answer bytes', len(s.recv(4096)))
except OSError as e:
    print('errno', e.errno)
`;

let top; // mode 0711: nobody may pass through, not list or create
let tmp; // nobody's own temp dir
const buses = [];

before(() => {
  top = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-users-'));
  fs.chmodSync(top, 0o711);
  tmp = path.join(top, 'tmp');
  fs.mkdirSync(tmp, { mode: 0o777 });
  fs.chmodSync(tmp, 0o1777);
});

after(async () => {
  for (const b of buses) await b.close();
  fs.rmSync(top, { recursive: true, force: true });
});

const openAt = async (dir, name, id) => {
  const bus = await open({ name, id, transport: 'shm', shm: { dir } });
  buses.push(bus);
  return bus;
};

describe('reliability: other users', { skip }, () => {
  test('nobody can neither join root\'s bus nor connect to its members; a connection that gets through is refused by SO_PEERCRED', { timeout: 60_000 }, async () => {
    const root = path.join(top, 'root');
    const a = await openAt(root, 'u', 'a');
    const b = await openAt(root, 'u', 'b');
    await a.waitFor('b', { timeout: 5000 });
    const errors = [];
    a.on('error', (err) => errors.push(err));

    const joined = await asNobody(process.execPath, [NOBODY_FIXTURE, root, 'u']);
    assert.equal(joined.err, null, joined.stderr);
    const r = JSON.parse(joined.stdout);
    assert.equal(r.uid, nobody);
    for (const attempt of [r.joinRootsBus, r.joinRootsBusByDefaultId]) {
      assert.equal(attempt.code, 'ERR_SHMBUS_TRANSPORT');
      assert.match(attempt.message, new RegExp(`belongs to uid 0, not ${nobody}`));
    }
    assert.deepEqual(r.ownBus, { opened: true, peers: [] }, "nobody's own bus of that name is another bus");
    assert.deepEqual(a.peers(), ['b'], 'nobody never joined');

    const sock = path.join(root, 'u', 'a.sock');
    if (hasPython) {
      // The bus directory (0700) keeps nobody from the socket.
      const blocked = await asNobody('/usr/bin/python3', ['-c', RAW_CLIENT, sock]);
      assert.equal(blocked.stdout.trim(), 'connect errno 13', blocked.stderr);
      // Opened up by mistake, the member still refuses a peer of another uid (SO_PEERCRED): it
      // hangs up without an answer (EPIPE, ECONNRESET or EOF at the client) and reports it.
      fs.chmodSync(root, 0o755);
      fs.chmodSync(path.join(root, 'u'), 0o755);
      fs.chmodSync(sock, 0o777);
      try {
        const refused = await asNobody('/usr/bin/python3', ['-c', RAW_CLIENT, sock]);
        assert.match(refused.stdout.trim(), /^(errno (32|104)|answer bytes 0)$/, refused.stdout + refused.stderr);
        for (let i = 0; i < 50 && errors.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 20));
        assert.ok(errors.some((e) => e.code === 'ERR_SHMBUS_PROTOCOL' && e.message.includes(`uid ${nobody}`)), JSON.stringify(errors.map((e) => e.message)));
        // And nobody's shmbus still can't join through the opened directory: not its own.
        const again = JSON.parse((await asNobody(process.execPath, [NOBODY_FIXTURE, root, 'u'])).stdout);
        assert.equal(again.joinRootsBus.code, 'ERR_SHMBUS_TRANSPORT');
      } finally {
        fs.chmodSync(root, 0o700);
        fs.chmodSync(path.join(root, 'u'), 0o700);
      }
    }
    // Nothing else broke.
    assert.deepEqual(a.peers(), ['b']);
    b.handle('ping', () => 'pong');
    assert.equal(await a.request('ping', null, { to: 'b', timeout: 5000 }), 'pong');
  });

  test("a bus directory owned by another user, a symlink, or writable by others is refused", { timeout: 30_000 }, async () => {
    const refuse = async (dir, name, pattern, what) => {
      await assert.rejects(open({ name, id: 'x', transport: 'shm', shm: { dir } }), (err) => err.code === 'ERR_SHMBUS_TRANSPORT' && pattern.test(err.message), what);
    };
    // The bus directory belongs to nobody (who could have made it to catch root's members).
    const base = path.join(top, 'base');
    fs.mkdirSync(base, { mode: 0o700 });
    fs.mkdirSync(path.join(base, 'theirs'), { mode: 0o700 });
    fs.chownSync(path.join(base, 'theirs'), nobody, nobody);
    await refuse(base, 'theirs', new RegExp(`belongs to uid ${nobody}`), 'a bus directory of nobody');
    // The root directory belongs to nobody.
    const theirRoot = path.join(top, 'theirroot');
    fs.mkdirSync(theirRoot, { mode: 0o700 });
    fs.chownSync(theirRoot, nobody, nobody);
    await refuse(theirRoot, 'bus', new RegExp(`belongs to uid ${nobody}`), 'a root directory of nobody');
    // Symlinks: a bus directory, and a root directory.
    fs.mkdirSync(path.join(base, 'real'), { mode: 0o700 });
    fs.symlinkSync(path.join(base, 'real'), path.join(base, 'link'));
    await refuse(base, 'link', /symlink/, 'a symlinked bus directory');
    fs.symlinkSync(base, path.join(top, 'baselink'));
    await refuse(path.join(top, 'baselink'), 'bus', /symlink/, 'a symlinked root directory');
    // Modes: a group- or world-writable root, a bus directory that others may enter.
    for (const mode of [0o777, 0o770, 0o722]) {
      const open_ = path.join(top, `open${mode.toString(8)}`);
      fs.mkdirSync(open_);
      fs.chmodSync(open_, mode);
      await refuse(open_, 'bus', /has mode/, `a root directory of mode ${mode.toString(8)}`);
    }
    for (const mode of [0o750, 0o710, 0o701]) {
      const dir = path.join(base, `m${mode.toString(8)}`);
      fs.mkdirSync(dir);
      fs.chmodSync(dir, mode);
      await refuse(base, `m${mode.toString(8)}`, /has mode/, `a bus directory of mode ${mode.toString(8)}`);
    }
    // A bus name can't climb out of the root.
    for (const name of ['../x', 'a/b', '..']) {
      await assert.rejects(open({ name, id: 'x', transport: 'shm', shm: { dir: base } }), { code: 'ERR_SHMBUS_INVALID_ARG' }, name);
    }
    // And a good directory still works.
    const fine = await openAt(base, 'fine', 'x');
    assert.equal(fine.transport, 'shm');
  });
});
