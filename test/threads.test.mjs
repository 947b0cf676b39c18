// Members in worker threads, on each transport under test that reaches between threads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { resultOf, transportsUnderTest } from './helpers/run.mjs';

const env = { SHMBUS_ID: '', NODE_APP_INSTANCE: '' };

for (const transport of (await transportsUnderTest()).filter((t) => t !== 'process')) {
  test(`${transport}: the main thread and two worker threads open one bus with default ids and answer each other`, async () => {
    const r = await resultOf('threads.mjs', { transport, env });
    assert.deepEqual(r.errors, []);
    assert.equal(r.transport, transport);
    assert.ok(r.mainId.endsWith(`-${r.pid}`), r.mainId);
    assert.deepEqual(r.ids, [`${r.mainId}-t1`, `${r.mainId}-t2`], 'host, pid and threadId');
    assert.equal(r.waitFor, 'resolved');
    assert.deepEqual(r.answers, [{ value: { id: r.ids[0], threadId: 1 } }, { value: { id: r.ids[1], threadId: 2 } }]);
  });
}
