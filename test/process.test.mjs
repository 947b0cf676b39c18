// The process transport's own behaviour: who can share a process bus, and the warning a program
// started on its own gets.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resultOf } from './helpers/run.mjs';

test("two programs started separately on 'process': each is warned it is a bus of one, and told to use shm or nats", async () => {
  // Both on the same bus name: with no hub between them they can't meet.
  const env = { SHMBUS_TEST_BUS: `alone${process.pid}` };
  const [a, b] = await Promise.all([resultOf('alone.mjs', { transport: 'process', args: ['alone'], env }), resultOf('alone.mjs', { transport: 'process', args: ['alone'], env })]);
  for (const r of [a, b]) {
    assert.deepEqual(r.peers, []);
    assert.equal(r.warnings.length, 1, JSON.stringify(r.warnings));
    assert.equal(r.warnings[0].code, 'SHMBUS_NO_HUB');
    assert.match(r.warnings[0].message, /^shmbus: bus "alone\d+" on the 'process' transport has no member but this process after 1000 ms, and this process has forked none\. A process bus is one hub .* Started separately .* use transport 'shm' \(one host\) or 'nats'/);
  }
});

test("a fork parent on 'process', forking at open() or after it, gets no warning and nor does its child", async () => {
  for (const mode of ['parent', 'late']) {
    const r = await resultOf('alone.mjs', { transport: 'process', args: [mode] });
    assert.deepEqual(r.warnings, [], mode);
    assert.deepEqual(r.peers, ['child'], mode);
    assert.deepEqual(r.child.warnings, [], mode);
  }
});

test("the application's own IPC messages and the bus's share the channel: every bus envelope is tagged, frames go as bytes on an 'advanced' channel, a burst goes as one", async () => {
  const r = await resultOf('envelopes.mjs', { transport: 'process', timeout: 30_000 });
  for (const [id, form] of [['json', 'text'], ['advanced', 'bytes']]) {
    const side = r[id];
    assert.equal(side.talked, 100);
    assert.equal(side.gotThere, 100, `${id} got the parent's 100 messages`);
    assert.equal(side.gotHere, 100, `the parent got ${id}'s 100 messages`);
    for (const [where, seen] of [['in the child', side.seenThere], ['in the parent', side.seenHere]]) {
      const at = `${id} channel, ${where}`;
      assert.deepEqual(seen.mine, [1, 2], `${at}: the application's own messages arrive as sent`);
      assert.equal(seen.untagged, 0, `${at}: nothing the application can't tell from its own`);
      const frames = seen.frames.bytes + seen.frames.text + seen.frames.other;
      assert.deepEqual(seen.frames, { bytes: 0, text: 0, other: 0, [form]: frames }, `${at}: frames travel as ${form}`);
      // 100 messages written in one turn, then a few answers: a handful of envelopes, not 100.
      assert.ok(frames >= 1 && frames <= 5, `${at}: ${frames} envelopes of frames`);
    }
  }
});
