// Many members on one shm bus: 200 programs that open at the same moment all link with each
// other; 64 members each send every other one 1 MiB, and what each member's memory (PSS) is,
// idle and after that traffic, is reported (the figures in the README come from this test).
// SHMBUS_TEST_SCALE_MEMBERS and SHMBUS_TEST_SCALE_TRAFFIC_MEMBERS change the two sizes.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { program, shmRuns } from './helpers/spawn.mjs';

const MEMBER = new URL('./fixtures/scale-member.mjs', import.meta.url);
const JOIN_MEMBERS = Number(process.env.SHMBUS_TEST_SCALE_MEMBERS || 200);
const TRAFFIC_MEMBERS = Number(process.env.SHMBUS_TEST_SCALE_TRAFFIC_MEMBERS || 64);
const noShm = (await shmRuns()) ? false : 'the shm transport does not run here';
let root;
let buses = 0;

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-scale-'));
  fs.chmodSync(root, 0o700);
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

/** Starts `count` members that open at one moment; resolves their reports. */
async function bus(count, bytes) {
  const name = `s${process.pid}_${++buses}`;
  // Time for every program to load shmbus first, two cores starting them all.
  const at = Date.now() + 2000 + count * 60;
  const env = { SHMBUS_DIR: root, NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --expose-gc`.trim() };
  const members = Array.from({ length: count }, (_, id) => program(MEMBER, { args: [name, String(id), String(count), String(at), String(bytes)], env }));
  try {
    return await Promise.all(members.map((m) => m.line((l) => 'id' in l, 240_000)));
  } finally {
    for (const m of members) m.kill('SIGTERM');
    await Promise.all(members.map((m) => m.exited));
  }
}

const median = (values) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
const mib = (kib) => `${(kib / 1024).toFixed(1)} MiB`;

test(`${JOIN_MEMBERS} members that open at the same moment all link with each other`, { skip: noShm, timeout: 300_000 }, async () => {
  const reports = await bus(JOIN_MEMBERS, 0);
  const bad = reports.filter((r) => r.failed || r.missing.length > 0 || r.errors.length > 0 || r.peers !== JOIN_MEMBERS - 1);
  assert.deepEqual(bad, [], `members that did not link with every other one`);
});

test(`${TRAFFIC_MEMBERS} members, all-to-all: 1 MiB from each to each arrives; memory per member idle and after`, { skip: noShm, timeout: 300_000 }, async (t) => {
  const reports = await bus(TRAFFIC_MEMBERS, 2 ** 20);
  const bad = reports.filter((r) => r.failed || r.missing.length > 0 || r.errors.length > 0 || r.missingBig?.length !== 0);
  assert.deepEqual(bad, [], 'members that missed a message');
  const figure = (key) => `${mib(median(reports.map((r) => r[key].pss)))} (rings ${mib(median(reports.map((r) => r[key].rings)))})`;
  t.diagnostic(`PSS per member (median of ${TRAFFIC_MEMBERS}): idle ${figure('idle')}; right after 1 MiB each way per pair ${figure('loaded')}; 2.5 s later ${figure('settled')}`);
});
