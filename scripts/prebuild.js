#!/usr/bin/env node
// npm's prepack step: the prebuilt addons that ship in the tarball, under prebuilds/. Always this
// machine's own (`npm run prebuildify`: prebuilds/linux-x64 on an x64 machine), then
// prebuilds/linux-arm64 (`npm run prebuildify:arm64`) when Debian's cross compiler
// aarch64-linux-gnu-g++ (package g++-aarch64-linux-gnu) is on PATH. prebuilds/ is emptied first,
// so the tarball holds only what this run built; each build moves its .node out of build/Release.
'use strict';

const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const root = path.join(__dirname, '..');
const prebuilds = path.join(root, 'prebuilds');
const CROSS_CXX = 'aarch64-linux-gnu-g++';

function build(script) {
  const before = new Set(list());
  const child = spawnSync('npm', ['run', '--silent', script], { cwd: root, stdio: 'inherit' });
  if (child.status !== 0) {
    console.error(`shmbus: \`npm run ${script}\` failed (${child.error?.message ?? `exit code ${child.status ?? child.signal}`})`);
    process.exit(1);
  }
  for (const file of list().filter((f) => !before.has(f))) console.log(`shmbus: built prebuilds/${file}`);
}

/** The prebuilt binaries, as paths under prebuilds/. */
function list() {
  if (!fs.existsSync(prebuilds)) return [];
  return fs.readdirSync(prebuilds).flatMap((dir) => fs.readdirSync(path.join(prebuilds, dir)).map((f) => `${dir}/${f}`));
}

fs.rmSync(prebuilds, { recursive: true, force: true });
build('prebuildify');
if (process.arch === 'arm64') {
  // this machine's own build was the arm64 one
} else if (spawnSync(CROSS_CXX, ['--version'], { stdio: 'ignore' }).status === 0) {
  build('prebuildify:arm64');
} else {
  console.log(`shmbus: no linux-arm64 prebuild: ${CROSS_CXX} is not on PATH (Debian/Ubuntu: apt-get install g++-aarch64-linux-gnu)`);
}
