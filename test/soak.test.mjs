// A bounded soak of the shm transport: 8 members send each other messages one to one, to lists
// and to everyone, of mixed sizes (up to 512 KiB), while members are killed -9 at random and
// started again under the same id. By sequence number, nothing that a live member accepted from a
// live sender is lost, duplicated, reordered or corrupted, no member reports an error, and a
// member that lived through it all has the fds and mappings it had before.
// SHMBUS_TEST_SOAK_SECONDS sets how long the killing goes on: 90 s by default (what CI runs);
// run it for 600 or more by hand after a change to the transport.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { open } from 'shmbus';
import { program, shmRuns } from './helpers/spawn.mjs';

const MEMBER = new URL('./fixtures/soak-member.mjs', import.meta.url);
const SECONDS = Number(process.env.SHMBUS_TEST_SOAK_SECONDS || 90);
const IDS = [1, 2, 3, 4, 5, 6, 7, 8];
const WITNESS = 1; // never killed
const noShm = (await shmRuns()) ? false : 'the shm transport does not run here';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
let root;

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-soak-'));
  fs.chmodSync(root, 0o700);
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

test(`soak: 8 members, one-to-one, lists and broadcasts, members killed -9 and restarted for ${SECONDS} s: nothing lost, duplicated or reordered; fds and mappings back to baseline`, { skip: noShm, timeout: (SECONDS + 120) * 1000 }, async (t) => {
  const name = `soak${process.pid}`;
  const coord = await open({ name, id: 'coord', transport: 'shm', shm: { dir: root } });
  const errors = [];
  coord.on('error', (err) => errors.push(err.message));
  const members = new Map();
  const start = async (id) => {
    const m = program(MEMBER, { args: [name, String(id)], env: { SHMBUS_DIR: root } });
    members.set(id, m);
    await m.line((l) => l.ready !== undefined, 30_000);
  };
  const ask = (id, action, data = null, timeout = 30_000) => coord.request(action, data, { to: id, timeout });
  try {
    await Promise.all(IDS.map(start));
    await coord.waitFor(IDS, { timeout: 30_000 });
    await sleep(1000);
    const baseline = await ask(WITNESS, 'resources');

    let kills = 0;
    const until = Date.now() + SECONDS * 1000;
    while (Date.now() < until) {
      await sleep(500 + Math.random() * 1500);
      const id = IDS[1 + Math.floor(Math.random() * (IDS.length - 1))];
      const victim = members.get(id);
      victim.kill('SIGKILL');
      await victim.exited;
      kills++;
      await sleep(Math.random() * 400);
      await start(id);
    }
    await coord.waitFor(IDS, { timeout: 30_000 });
    // Every member links with every other before the count: they say so in their reports too.
    await sleep(1000);

    const sent = {};
    await Promise.all(IDS.map(async (id) => (sent[id] = await ask(id, 'stop'))));
    const reports = {};
    await Promise.all(IDS.map(async (id) => (reports[id] = await ask(id, 'report', { from: IDS.filter((x) => x !== id), timeout: 20_000 }))));
    const missing = [];
    for (const r of IDS) {
      assert.deepEqual(reports[r].problems, [], `what member ${r} received`);
      assert.deepEqual(reports[r].errors, [], `errors at member ${r}`);
      for (const s of IDS) {
        if (s === r) continue;
        const got = reports[r].got[String(s)];
        const count = sent[s][String(r)];
        if (count === undefined || got?.fin !== count || got.got !== count) missing.push({ from: s, to: r, sent: count, fin: got?.fin, got: got?.got });
      }
    }
    assert.deepEqual(missing, [], 'pairs whose counts differ');
    let now;
    for (let i = 0; i < 50; i++) {
      now = await ask(WITNESS, 'resources');
      if (now.fds === baseline.fds && now.memfdMaps === baseline.memfdMaps) break;
      await sleep(100);
    }
    assert.deepEqual(now, baseline, `member ${WITNESS}'s fds and memfd mappings after ${kills} kills`);
    assert.deepEqual(errors, []);
    const total = Object.values(sent).reduce((a, m) => a + Object.values(m).reduce((x, y) => x + y, 0), 0);
    t.diagnostic(`${kills} kills; ${total} messages counted between the final members`);
  } finally {
    for (const m of members.values()) m.kill('SIGKILL');
    await coord.close();
  }
});
