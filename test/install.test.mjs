// The package as a user gets it: `npm pack`, then `npm install` of the tarball into an empty
// project on a machine with no compiler. With the shipped prebuild the bus runs on shared memory;
// with no prebuild (a platform we don't ship one for) the install still succeeds, says why in one
// line, and the bus runs on the 'process' transport with one warning.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = fileURLToPath(new URL('..', import.meta.url));
const libc = fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc';
const prebuildDir = path.join(repo, 'prebuilds', `${process.platform}-${process.arch}`);
let tmp;

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

/** The newest modification time among the files a prebuild is made from. */
function newestSource() {
  const files = [path.join(repo, 'binding.gyp')];
  for (const name of fs.readdirSync(path.join(repo, 'native'))) {
    if (/\.(cc|h)$/.test(name)) files.push(path.join(repo, 'native', name));
  }
  return Math.max(...files.map((f) => fs.statSync(f).mtimeMs));
}

function prebuildIsFresh() {
  const names = fs.existsSync(prebuildDir) ? fs.readdirSync(prebuildDir).filter((n) => n.endsWith('.node')) : [];
  return names.length > 0 && names.every((n) => fs.statSync(path.join(prebuildDir, n)).mtimeMs >= newestSource());
}

/** Installs `tarball` into a new, empty project under tmp, with no compiler on PATH. */
function installInto(name, tarball) {
  const project = path.join(tmp, name);
  fs.mkdirSync(project);
  fs.writeFileSync(path.join(project, 'package.json'), JSON.stringify({ name, private: true, type: 'module' }));
  const r = sh('npm', ['install', '--prefer-offline', '--foreground-scripts', '--no-package-lock', tarball], {
    cwd: project,
    env: userEnv({ PATH: `${path.join(tmp, 'no-compiler')}${path.delimiter}${process.env.PATH}` }),
  });
  assert.equal(r.status, 0, r.out);
  fs.writeFileSync(path.join(project, 'probe.mjs'), PROBE);
  return { project, install: r };
}

/** A user's program: open a bus with the defaults, send itself a message, then try 'shm' outright. */
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
await bus.close();
console.log(JSON.stringify({ transport: bus.transport, echoed, shm }));
`;

function runProbe(project, args = [], env = {}) {
  const r = sh(process.execPath, ['probe.mjs', ...args], { cwd: project, env: userEnv(env), timeout: 20_000 });
  assert.equal(r.status, 0, r.out);
  const warnings = r.stderr.split('\n').filter((l) => /\bWarning: /.test(l));
  return { ...JSON.parse(r.stdout.trim().split('\n').at(-1)), warnings, out: r.out };
}

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-install-'));
  // Every build tool node-gyp could reach fails, as on a machine without a toolchain.
  const noCompiler = path.join(tmp, 'no-compiler');
  fs.mkdirSync(noCompiler);
  for (const tool of ['cc', 'gcc', 'g++', 'c++', 'clang', 'clang++', 'make', 'gmake', 'python', 'python3']) {
    fs.writeFileSync(path.join(noCompiler, tool), `#!/bin/sh\necho "${tool}: not installed (shmbus install test)" >&2\nexit 127\n`, { mode: 0o755 });
  }
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

test('the packed tarball installs without a compiler and runs on shared memory from its prebuild', { timeout: 150_000 }, (t) => {
  if (!prebuildIsFresh()) {
    const r = sh('npm', ['run', 'prebuildify'], { cwd: repo, env: userEnv() });
    assert.equal(r.status, 0, r.out);
    assert.ok(prebuildIsFresh(), `npm run prebuildify made no prebuild in ${prebuildDir}`);
  }
  // dist/ was built by `npm test`; --ignore-scripts skips a second `prepare`.
  const pack = sh('npm', ['pack', '--ignore-scripts', '--json', '--pack-destination', tmp], { cwd: repo, env: userEnv() });
  assert.equal(pack.status, 0, pack.out);
  const [{ filename, files }] = JSON.parse(pack.stdout);
  const paths = files.map((f) => f.path);
  const tarball = path.join(tmp, filename);

  // What ships: the library, the prebuild, the sources for a source build, the install script.
  assert.ok(paths.includes('dist/index.js') && paths.includes('dist/index.mjs') && paths.includes('dist/index.d.ts'), paths.join('\n'));
  assert.ok(paths.some((p) => p.startsWith(`prebuilds/${process.platform}-${process.arch}/`) && p.endsWith(`.${libc}.node`)), paths.join('\n'));
  assert.ok(paths.includes('binding.gyp') && paths.includes('native/binding.cc') && paths.includes('scripts/install.js'), paths.join('\n'));
  // What doesn't: sources of the JS, tests, maps, build output.
  const unwanted = paths.filter((p) => /^(src|test|build|native\/test|\.ci)\//.test(p) || p.endsWith('.map') || p.endsWith('.ts') && !p.endsWith('.d.ts'));
  assert.deepEqual(unwanted, []);

  const withPrebuild = installInto('with-prebuild', tarball);
  assert.doesNotMatch(withPrebuild.install.stdout, /'process' transport/, withPrebuild.install.out);
  assert.equal(fs.existsSync(path.join(withPrebuild.project, 'node_modules', 'shmbus', 'build')), false, 'a prebuild fits: nothing is compiled');

  const auto = runProbe(withPrebuild.project);
  assert.equal(auto.transport, 'shm', auto.out);
  assert.deepEqual(auto.echoed, { n: 1 });
  assert.deepEqual(auto.warnings, [], auto.out);

  // SHMBUS_TRANSPORT overrides the default without a warning.
  const forced = runProbe(withPrebuild.project, [], { SHMBUS_TRANSPORT: 'process' });
  assert.equal(forced.transport, 'process', forced.out);
  assert.deepEqual(forced.warnings, [], forced.out);

  // The same package without its prebuilds: what a platform we ship none for gets.
  const unpacked = path.join(tmp, 'unpacked');
  fs.mkdirSync(unpacked);
  const untar = sh('tar', ['-xzf', tarball, '-C', unpacked], { cwd: tmp });
  assert.equal(untar.status, 0, untar.out);
  fs.rmSync(path.join(unpacked, 'package', 'prebuilds'), { recursive: true, force: true });
  const bare = path.join(tmp, 'shmbus-no-prebuilds.tgz');
  const retar = sh('tar', ['-czf', bare, '-C', unpacked, 'package'], { cwd: tmp });
  assert.equal(retar.status, 0, retar.out);

  const noPrebuild = installInto('no-prebuild', bare);
  // The install succeeded (installInto checked) and said, in one line, what happens and what to do.
  const said = noPrebuild.install.stdout.split('\n').filter((l) => l.startsWith('shmbus: '));
  assert.equal(said.length, 1, noPrebuild.install.out);
  assert.match(said[0], /no prebuilt addon for .*can't be built from source here: .*not found; shmbus will use the 'process' transport\. .*npm rebuild shmbus/, noPrebuild.install.out);
  t.diagnostic(`install said: ${said[0]}`);
  const installed = path.join(noPrebuild.project, 'node_modules', 'shmbus');
  assert.equal(fs.existsSync(path.join(installed, 'build', 'Release', 'shmbus.node')), false);

  const fallback = runProbe(noPrebuild.project, ['try-shm']);
  assert.equal(fallback.transport, 'process', fallback.out);
  assert.deepEqual(fallback.echoed, { n: 1 });
  assert.equal(fallback.warnings.length, 1, fallback.out);
  assert.match(fallback.warnings[0], /SHMBUS_FALLBACK.*'process' transport because .*native addon did not load.*npm rebuild shmbus/, fallback.out);
  t.diagnostic(`run time said: ${fallback.warnings[0]}`);
  assert.equal(fallback.shm.code, 'ERR_SHMBUS_TRANSPORT', fallback.out);
  assert.match(fallback.shm.message, /native addon did not load/, fallback.out);
});
