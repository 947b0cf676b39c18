// Bad input: every refused call gives its code from DESIGN.md section 1, and after each one the
// bus still carries a message and a request (test/fixtures/reliability-input.mjs). The
// conformance suite checks many of these codes generically; this adds use after close, requests
// without `to`, options of the wrong type, bus names with path characters (nothing is created
// outside the bus root), and the bus still working after every refusal.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run, transportsUnderTest } from './helpers/run.mjs';

const transports = (await transportsUnderTest()).filter((t) => t === 'shm' || t === 'process');

const expected = (transport) => {
  const e = {
    'v8 function': 'ERR_SHMBUS_SERIALIZE',
    'v8 symbol to all': 'ERR_SHMBUS_SERIALIZE',
    'v8 request with a function': 'ERR_SHMBUS_SERIALIZE',
    'raw string': 'ERR_SHMBUS_SERIALIZE',
    'raw object': 'ERR_SHMBUS_SERIALIZE',
    'raw number': 'ERR_SHMBUS_SERIALIZE',
    'raw ArrayBuffer': 'ERR_SHMBUS_SERIALIZE',
    'raw request with a string': 'ERR_SHMBUS_SERIALIZE',
    'too large to one': 'ERR_SHMBUS_TOO_LARGE',
    'too large to all': 'ERR_SHMBUS_TOO_LARGE',
    'too large request': 'ERR_SHMBUS_TOO_LARGE',
    'answer too large': { code: 'ERR_SHMBUS_REMOTE', remoteCode: 'ERR_SHMBUS_TOO_LARGE' },
    'a second handler for an action': 'ERR_SHMBUS_INVALID_ARG',
    'a bad id in a list': 'ERR_SHMBUS_INVALID_ARG',
    'unknown id': 'ERR_SHMBUS_UNKNOWN_PEER',
    'unknown id: request': 'ERR_SHMBUS_UNKNOWN_PEER',
    'on() with a listener that is not a function': 'ERR_SHMBUS_INVALID_ARG',
  };
  for (const what of ['empty', '257 chars', 'number', 'null', 'object']) {
    for (const call of ['sendMessage', 'request', 'handle']) e[`action ${what}: ${call}`] = 'ERR_SHMBUS_INVALID_ARG';
  }
  for (const name of ['peer:join', 'peer:leave', 'error']) {
    for (const call of ['sendMessage', 'request', 'handle']) e[`reserved ${name}: ${call}`] = 'ERR_SHMBUS_INVALID_ARG';
  }
  for (const id of ['-1', '1.5', '2^31', 'NaN', "'1abc'", "'a b'", "''", 'an object', 'true', "'../x'", "'a'.repeat(65)"]) {
    for (const call of ['sendMessage', 'request', 'waitFor']) e[`id ${id}: ${call}`] = 'ERR_SHMBUS_INVALID_ARG';
  }
  for (const what of ['without options', 'with options null', 'with {}', 'with to: undefined', 'with to: null', 'with a list as to', 'with timeout -1', "with timeout '100'", 'with signal {}', 'with options a string']) {
    e[`request ${what}`] = 'ERR_SHMBUS_INVALID_ARG';
  }
  return e;
};

const badOpenNames = (transport) => [
  'name 5', "name '../x'", "name 'a/b'", "name '..'", "name '.'", "name '/tmp'", "name 'a\\0b'", "name 'x/../../y'", "name ''",
  'id {}', 'id true', 'codec 5', 'transport 5', "requestTimeout '1'", "maxMessageSize '1'", 'maxQueueBytes 0', 'maxQueueBytes Infinity', "shm 'x'", 'shm []',
  ...(transport === 'shm' ? ["shm.ringSize '4096'", 'shm.ringSize 4095', 'shm.ringSize 2^31', 'shm.dir 5', "shm.spinUs '1'"] : []),
];

describe('reliability: bad input', () => {
  for (const transport of transports) {
    test(`${transport}: each refusal has its code and the bus still works after it`, { timeout: 60_000 }, async () => {
      const r = await run('reliability-input.mjs', { transport, timeout: 50_000 });
      assert.equal(r.code, 0, r.describe());
      const out = r.result;
      assert.ok(out, r.describe());
      assert.equal(out.failed, undefined, out.failed);
      for (const [name, code] of Object.entries(expected(transport))) {
        assert.ok(out[name], `case ${name} did not run`);
        assert.deepEqual(out[name].code, code, name);
        assert.equal(out[name].good, 'ok', `the bus after: ${name}`);
      }
      assert.deepEqual(Object.keys(out.badOpen), badOpenNames(transport));
      for (const [what, code] of Object.entries(out.badOpen)) assert.equal(code, 'ERR_SHMBUS_INVALID_ARG', `open() with ${what}`);
      assert.deepEqual(out.badOpenTopLevel, { 'options 5': 'ERR_SHMBUS_INVALID_ARG', 'options []': 'ERR_SHMBUS_INVALID_ARG' });
      if (transport === 'shm') {
        assert.deepEqual(out.dirsOutsideRoot, [], "bus names with path characters created nothing next to the bus root");
        assert.deepEqual(out.dirsInRoot, [], 'nor in it');
      }
      assert.equal(out.goodAfterOpen, 'ok');
      assert.equal(out.duplicatePeer, 'ERR_SHMBUS_DUPLICATE_ID');
      assert.equal(out.duplicateSelf, 'ERR_SHMBUS_DUPLICATE_ID');
      assert.equal(out.goodAfterDuplicates, 'ok');
      assert.deepEqual(out.peersAfterDuplicates, ['peer'], 'the refused members never joined');
      // (peers() after close() is not checked: it still lists the members seen before.)
      const { peers, ...afterClose } = out.afterClose;
      assert.deepEqual(afterClose, {
        pendingRequest: 'ERR_SHMBUS_CLOSED',
        pendingWaitFor: 'ERR_SHMBUS_CLOSED',
        sendMessage: 'ERR_SHMBUS_CLOSED',
        sendMessageToAll: 'ERR_SHMBUS_CLOSED',
        request: 'ERR_SHMBUS_CLOSED',
        waitFor: 'ERR_SHMBUS_CLOSED',
        drain: 'ERR_SHMBUS_CLOSED',
        closeAgain: 'resolved',
      });
      void peers;
      assert.equal(out.goodAfterClose, 'ok');
      // Every good message arrived, and nothing refused arrived at all.
      assert.deepEqual(out.gotAtPeer, { v8: out.goodSent });
    });
  }
});
