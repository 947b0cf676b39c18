#!/usr/bin/env node
// npm's install step for shmbus. It puts the native addon (the shared-memory transport) in place
// when it can and never fails a user's `npm install` when it can't: shmbus then runs on the
// 'process' transport, and says so here and once at run time.
//
//   1. a prebuilt binary under prebuilds/ that fits this platform and loads (node-gyp-build's own
//      resolution, so the install picks exactly what the loader will load);
//   2. else a build from the shipped sources with node-gyp, when make, a C++ compiler and Python
//      are there;
//   3. else one line saying shmbus will use the 'process' transport and how to get shm.
//
// A development copy of this repository (it has src/) and `npm install --build-from-source`
// always build from source, and a failed build fails the install: that is a developer or CI
// asking for the addon, and they need to see the compiler's error where it happened.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const HOW_TO_GET_SHM = 'for shared memory, install make, g++ and python3 (Debian/Ubuntu: apt-get install make g++ python3) and run `npm rebuild shmbus`';

function main() {
  if (process.platform !== 'linux') {
    return fallback(`the shared-memory transport runs on Linux only, not on ${process.platform}`, '');
  }
  const hasSources = fs.existsSync(path.join(root, 'binding.gyp')) && fs.existsSync(path.join(root, 'native'));
  const fromSource = hasSources && (process.env.npm_config_build_from_source === 'true' || isCheckout());

  let prebuildProblem;
  if (!fromSource) {
    prebuildProblem = prebuildProblemOrUndefined();
    if (prebuildProblem === undefined) return;
  }

  const missing = hasSources ? whyNoSourceBuild() : 'the native sources are not in this copy of shmbus';
  if (missing !== undefined) {
    if (fromSource) {
      const why = isCheckout() ? 'a development copy always builds it' : '--build-from-source asked for it';
      return fail(`shmbus: can't build the native addon from source (${why}): ${missing}. Install make, g++ and python3 (Debian/Ubuntu: apt-get install make g++ python3).`);
    }
    return fallback(`${prebuildProblem}, and it can't be built from source here: ${missing}`, hasSources ? HOW_TO_GET_SHM : '');
  }

  const built = buildFromSource(fromSource);
  if (built.ok) {
    const problem = loadProblem(path.join(root, 'build', 'Release', 'shmbus.node'));
    if (problem === undefined) return console.log('shmbus: built the native addon from source');
    if (fromSource) return fail(`shmbus: the native addon was built but doesn't load: ${problem}`);
    return fallback(`${prebuildProblem}, and the addon built from source doesn't load: ${problem}`);
  }
  if (fromSource) return fail('shmbus: building the native addon from source failed (node-gyp output above)');
  return fallback(
    `${prebuildProblem}, and building it from source failed (${built.summary})`,
    `for shared memory, see what failed in ${built.log}, then run \`npm rebuild shmbus\``,
  );
}

/** Why no shipped binary serves this machine, or undefined when one loads. */
function prebuildProblemOrUndefined() {
  let nodeGypBuild;
  try {
    nodeGypBuild = require('node-gyp-build');
  } catch (err) {
    return `node-gyp-build, which finds the prebuilt addon, did not load (${err.message.split('\n')[0]})`;
  }
  let file;
  try {
    file = nodeGypBuild.resolve(root);
  } catch {
    const libc = process.env.LIBC || (fs.existsSync('/etc/alpine-release') ? 'musl' : 'glibc');
    return `there is no prebuilt addon for ${process.platform}-${process.arch} (${libc})`;
  }
  const problem = loadProblem(file);
  return problem === undefined ? undefined : `the prebuilt addon ${path.relative(root, file)} doesn't load (${problem})`;
}

/** Loads the addon in a child process, so that a crash or a bad binary can't take this one down. */
function loadProblem(file) {
  const child = spawnSync(process.execPath, ['-e', 'require(process.argv[1])', file], { encoding: 'utf8' });
  if (child.status === 0) return undefined;
  if (child.error) return child.error.message;
  const lines = `${child.stderr}`.split('\n').map((l) => l.trim()).filter(Boolean);
  return lines.find((l) => /^Error\b|Error:/.test(l)) ?? lines.at(-1) ?? (child.signal ? `killed by ${child.signal}` : `exit code ${child.status}`);
}

/** Why node-gyp can't build here, or undefined when it has what it needs. */
function whyNoSourceBuild() {
  if (nodeGyp() === undefined) return 'node-gyp was not found (run this script through npm, e.g. `npm rebuild shmbus`)';
  const missing = [];
  if (!runs(process.env.MAKE || 'make', ['--version'])) missing.push('make');
  if (!runs(process.env.CXX || 'g++', ['--version'])) missing.push(process.env.CXX ? `a C++ compiler (CXX=${process.env.CXX})` : 'a C++ compiler (g++)');
  const python = [process.env.npm_config_python, process.env.PYTHON, 'python3', 'python'].filter(Boolean);
  if (!python.some((cmd) => runs(cmd, ['-c', 'import sys; sys.exit(sys.version_info < (3, 6))']))) missing.push('python3');
  return missing.length ? `${missing.join(', ')} not found` : undefined;
}

/** node-gyp as [command, ...args]: npm's own (npm says where), a local install, or the PATH's. */
function nodeGyp() {
  const fromNpm = process.env.npm_config_node_gyp;
  if (fromNpm && fs.existsSync(fromNpm)) return /\.js$/.test(fromNpm) ? [process.execPath, fromNpm] : [fromNpm];
  try {
    return [process.execPath, require.resolve('node-gyp/bin/node-gyp.js', { paths: [root] })];
  } catch {}
  return runs('node-gyp', ['--version']) ? ['node-gyp'] : undefined;
}

function runs(cmd, args) {
  const child = spawnSync(cmd, args, { stdio: 'ignore' });
  return !child.error && child.status === 0;
}

/**
 * `node-gyp rebuild`, one make job per core. From source on purpose, its output goes to the
 * terminal (warnings and errors, and the compiler's lines: node-gyp's own info lines only at
 * npm's --loglevel info or more); otherwise to build/install.log, and the summary is the first
 * compiler error.
 */
function buildFromSource(showOutput) {
  const [cmd, ...args] = nodeGyp();
  args.push('rebuild', '--release', '--jobs', 'max');
  if (showOutput) {
    const asked = process.env.npm_config_loglevel;
    args.push('--loglevel', ['info', 'verbose', 'silly'].includes(asked) ? asked : 'warn');
    console.log('shmbus: building the native addon from source');
    const child = spawnSync(cmd, args, { cwd: root, stdio: 'inherit' });
    return { ok: child.status === 0 };
  }
  const child = spawnSync(cmd, args, { cwd: root, encoding: 'utf8', maxBuffer: 64 * 2 ** 20 });
  if (child.status === 0) return { ok: true };
  const output = `${child.stdout ?? ''}${child.stderr ?? ''}${child.error ? `\n${child.error.message}` : ''}`;
  const log = path.join(root, 'build', 'install.log');
  try {
    fs.mkdirSync(path.dirname(log), { recursive: true });
    fs.writeFileSync(log, output);
  } catch {}
  const summary = output.split('\n').find((l) => /\berror\b/i.test(l))?.trim() ?? `node-gyp exited with ${child.status ?? child.signal}`;
  return { ok: false, summary, log };
}

/** The one line a user sees when shm can't be had; the install still succeeds. */
function fallback(reason, fix = HOW_TO_GET_SHM) {
  console.log(`shmbus: ${reason}; shmbus will use the 'process' transport${fix ? `. ${fix[0].toUpperCase()}${fix.slice(1)}` : ''}.`);
}

function fail(message) {
  console.error(message);
  process.exitCode = 1;
}

/**
 * True in a development copy (a clone, or a `file:` dependency on one): it has the TypeScript
 * sources, which the published package doesn't, and its addon is part of the work, not a download.
 */
function isCheckout() {
  return fs.existsSync(path.join(root, 'src', 'index.ts'));
}

main();
