// What shm buses leave behind: nothing. The last member out removes its bus directory; members
// that die are cleaned up by survivors, or by the next member to join; two members leaving and
// joining at the same instants never trip over a directory that goes and comes back.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { open } from 'shmbus';
import { program, shmRuns } from './helpers/spawn.mjs';
import { resultOf } from './helpers/run.mjs';

const noShm = (await shmRuns()) ? false : 'the shm transport does not run here';
let root;
let buses = 0;
const busName = () => `l${process.pid}_${++buses}`;
const left = () => fs.readdirSync(root).flatMap((bus) => [bus, ...fs.readdirSync(path.join(root, bus)).map((f) => `${bus}/${f}`)]);

before(() => {
  root = fs.mkdtempSync(path.join(os.tmpdir(), 'shmbus-litter-'));
  fs.chmodSync(root, 0o700);
});
after(() => fs.rmSync(root, { recursive: true, force: true }));

test('buses whose members all leave, or die (the next open() anywhere under the root sweeps them), leave nothing under the shmbus root', { skip: noShm, timeout: 120_000 }, async () => {
  const env = { SHMBUS_DIR: root };
  await resultOf('requests.mjs', { transport: 'shm', env });
  for (const mode of ['cluster', 'fork']) await resultOf('kill.mjs', { transport: 'shm', env, args: [mode] });
  for (let i = 0; i < 10; i++) {
    const bus = await open({ name: busName(), id: i, transport: 'shm', shm: { dir: root } });
    await bus.close();
  }
  await new Promise((resolve) => setTimeout(resolve, 100)); // the sweep runs just after open()
  assert.deepEqual(left(), []);
});

test('a member that died alone leaves its files; the next member to join removes them, and the directory goes with the last one out', { skip: noShm, timeout: 60_000 }, async () => {
  const name = busName();
  const lone = program(new URL('./fixtures/shm-member.mjs', import.meta.url), { args: [name, 'lone'], env: { SHMBUS_DIR: root } });
  await lone.line((l) => 'ready' in l);
  lone.kill('SIGKILL');
  await lone.exited;
  assert.deepEqual(left().sort(), [name, `${name}/lone.lock`, `${name}/lone.sock`]);
  const next = await open({ name, id: 'next', transport: 'shm', shm: { dir: root } });
  assert.deepEqual(left().sort(), [name, `${name}/next.lock`, `${name}/next.sock`]);
  await next.close();
  assert.deepEqual(left(), []);
});

test('two members that leave and join one bus at the same instants, 300 rounds each: every open works, nothing is left', { skip: noShm, timeout: 120_000 }, async () => {
  const name = busName();
  const churn = ['a', 'b'].map((id) => program(new URL('./fixtures/churn-member.mjs', import.meta.url), { args: [name, id, '300'], env: { SHMBUS_DIR: root } }));
  const reports = await Promise.all(churn.map((p) => p.line((l) => 'rounds' in l, 100_000)));
  assert.deepEqual(reports, [{ rounds: 300, failed: [] }, { rounds: 300, failed: [] }]);
  await Promise.all(churn.map((p) => p.exited));
  assert.deepEqual(left(), []);
});
