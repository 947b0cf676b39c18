// The conformance suite: every behaviour of DESIGN.md section 1, run by real programs (a cluster
// primary and its workers, a child_process.fork parent and its children) on each transport under
// test. Choose transports with SHMBUS_TEST_TRANSPORTS=process,shm,nats; by default 'process',
// plus 'shm' where a bus opens with it.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run, resultOf, transportsUnderTest } from './helpers/run.mjs';

const transports = await transportsUnderTest();

/** What `received` looks like when only the members in `got` received `entry`, once each. */
function onlyTo(everyone, got, entry) {
  return Object.fromEntries(everyone.map((id) => [String(id), got.includes(id) ? [entry] : []]));
}

for (const transport of transports) {
  describe(`conformance on ${transport}`, () => {
    test('a cluster primary and 4 workers: ids, peers(), waitFor(), sendMessage() to all, one, a list, self', async () => {
      const r = await resultOf('cluster.mjs', { transport });
      const everyone = ['primary', 1, 2, 3, 4];
      const nobody = onlyTo(everyone, [], '');

      assert.equal(r.id, 'primary');
      assert.equal(r.transport, transport);
      assert.deepEqual(r.peers, [1, 2, 3, 4]);
      assert.deepEqual(r.workerIds, [1, 2, 3, 4]);
      assert.deepEqual(
        r.workers.map(({ id, transport, peers }) => ({ id, transport, peers })),
        [
          { id: 1, transport, peers: [2, 3, 4, 'primary'] },
          { id: 2, transport, peers: [1, 3, 4, 'primary'] },
          { id: 3, transport, peers: [1, 2, 4, 'primary'] },
          { id: 4, transport, peers: [1, 2, 3, 'primary'] },
        ],
      );
      assert.equal(r.waitForAll, 'resolved');
      assert.equal(r.waitForOne, 'resolved');
      assert.equal(r.waitForMissing, 'ERR_SHMBUS_TIMEOUT');

      // To all: 5 members, the sender included, one copy each, encoded at the call.
      assert.deepEqual(r.toAll, { sent: { value: 5 }, received: onlyTo(everyone, everyone, 'hello<-2') });
      assert.deepEqual(r.toOne, { sent: { value: 1 }, received: onlyTo(everyone, [1], 'one<-3') });
      // [1, 4, 4, 'primary', 1]: a repeated id gets one copy.
      assert.deepEqual(r.toList, { sent: { value: 3 }, received: onlyTo(everyone, [1, 4, 'primary'], 'list<-primary') });
      assert.deepEqual(r.toSelf, { sent: { value: 1 }, received: onlyTo(everyone, [4], 'self<-4') });
      assert.deepEqual(r.toSelfList, { sent: { value: 1 }, received: onlyTo(everyone, [2], 'self<-2') });
      // A list is checked whole: one bad id and nobody gets anything.
      assert.deepEqual(r.unknownInList, { sent: 'ERR_SHMBUS_UNKNOWN_PEER', received: nobody });
      assert.deepEqual(r.badIdInList, { sent: 'ERR_SHMBUS_INVALID_ARG', received: nobody });
      assert.deepEqual(r.unknownAlone, { sent: 'ERR_SHMBUS_UNKNOWN_PEER', received: nobody });
    });
  });
}
