// Load: members all-to-all with every message checked by sequence number and content, and a slow
// consumer. The programs are in test/fixtures/reliability-load.mjs; no assertion on speed.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run, transportsUnderTest } from './helpers/run.mjs';

const transports = await transportsUnderTest();
const MiB = 2 ** 20;

// --expose-gc: the members measure RSS after a full GC, so that memory bounds are about what is
// kept, not about garbage Buffers V8 has yet to collect.
const env = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --expose-gc`.trim() };

async function scenario(transport, name, options, timeout) {
  const r = await run('reliability-load.mjs', { transport, env, args: [name, JSON.stringify(options)], timeout });
  assert.equal(r.code, 0, r.describe());
  assert.ok(r.result, `no result: ${r.describe()}`);
  assert.equal(r.result.failed, undefined, `the run failed: ${r.result.failed}\n${r.describe()}`);
  assert.equal(r.result.stuck, undefined, `the run stuck at ${r.result.stuck}: ${r.result.why}\n${r.describe()}`);
  return r.result;
}

function checkAllToAll(r, members, count) {
  const ids = Array.from({ length: members }, (_, i) => `m${i + 1}`);
  for (const to of ids) {
    for (const from of ids) {
      if (from === to) continue;
      const got = r.reports[to][from];
      assert.deepEqual(got.errors, [], `${to} from ${from}: lost, duplicated, corrupted or reordered`);
      assert.equal(got.errorCount, 0);
      assert.equal(r.flood[from].sent[to], count, `${from} sent ${r.flood[from].sent[to]} to ${to}`);
      assert.equal(got.fin, count);
      assert.equal(got.got, count, `${to} got ${got.got} of ${count} from ${from}`);
    }
  }
  assert.equal(r.messages, members * (members - 1) * count);
}

describe('reliability: load', () => {
  const shm = transports.includes('shm');
  test('shm: 4 members all-to-all, 1,008,000 messages (~2.9 GB, mostly small, some up to 1 MiB) through 4 KiB rings: none lost, duplicated, corrupted or reordered', { skip: !shm && 'the shm transport does not run here', timeout: 200_000 }, async () => {
    // A 4 KiB ring holds records of at most 1 KiB: almost every message wraps or is fragmented.
    const members = 4;
    const count = 84_000;
    const maxQueueBytes = 4 * MiB;
    const r = await scenario('shm', 'all', { members, count, ringSize: 4096, maxQueueBytes, deadline: 180_000 }, 190_000);
    checkAllToAll(r, members, count);
    assert.ok(r.bytes > 2 * 2 ** 30, `only ${r.bytes} bytes moved`);
    for (const [id, f] of Object.entries(r.flood)) {
      assert.ok(f.backpressure > 0, `${id} never met BACKPRESSURE with maxQueueBytes ${maxQueueBytes}: the run did not press the queues`);
    }
  });

  test('process: 4 members all-to-all through the hub, every message checked', { skip: !transports.includes('process'), timeout: 90_000 }, async () => {
    const r = await scenario('process', 'all', { members: 4, count: 3000, maxQueueBytes: 4 * MiB, deadline: 80_000 }, 85_000);
    checkAllToAll(r, 4, 3000);
  });

  for (const transport of transports.filter((t) => t === 'shm' || t === 'process')) {
    test(`${transport}: a slow consumer: the sender meets BACKPRESSURE, waits with drain(), stays within maxQueueBytes; nothing is lost`, { timeout: 200_000 }, async () => {
      const maxQueueBytes = MiB;
      const count = 6000;
      const size = 16384;
      const r = await scenario(transport, 'slow', { count, size, busyMs: 1, maxQueueBytes, deadline: 180_000 }, 190_000);
      assert.equal(r.flood.sent.consumer, count);
      assert.ok(r.flood.backpressure > 0, 'the sender was never refused: the consumer was not slow enough to test anything');
      // 96 MiB went through a 1 MiB queue; the sender's memory grew by far less than that.
      assert.ok(r.flood.rssMax - r.rssStart <= maxQueueBytes + 32 * MiB, `sender RSS grew by ${(r.flood.rssMax - r.rssStart) / MiB} MiB`);
      assert.deepEqual(r.report.sender, { got: count, bytes: count * (16 + size), errors: [], errorCount: 0, fin: count });
    });
  }
});
