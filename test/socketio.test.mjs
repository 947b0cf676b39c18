// shmbus/socket.io: real socket.io servers under node:cluster, real socket.io-client clients, on
// every transport under test (test/fixtures/socketio.mjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { resultOf, transportsUnderTest } from './helpers/run.mjs';

const transports = await transportsUnderTest();
const names = (...list) => list.sort();
const everyone = names('w1a', 'w1b', 'w2a', 'w2b', 'w3a', 'w3b');
const withoutMs = ({ ms, ...rest }) => rest;
const each = (list, value) => Object.fromEntries(list.map((name) => [name, [value]]));

for (const transport of transports) {
  const cluster = resultOf('socketio.mjs', { args: ['cluster'], transport, timeout: 60_000 });
  cluster.catch(() => undefined); // reported by each test below

  test(`${transport}: broadcasts reach all, a room, all but a room, this server only, a namespace; binary stays binary`, async () => {
    const r = await cluster;
    assert.deepEqual(r.all, each(everyone, 'all'));
    assert.deepEqual(r.room, each(['w1a', 'w2a', 'w3a'], 'to-a'));
    assert.deepEqual(r.except, each(['w1b', 'w2b', 'w3b'], 'not-a'));
    assert.deepEqual(r.local, each(['w1a', 'w1b'], 'local'));
    assert.deepEqual(r.binary, each(everyone, 'bin:010203'));
    assert.deepEqual(r.namespace, { w2admin: ['admins'] });
  });

  test(`${transport}: serverSideEmit reaches the other servers; with an ack, every other server answers (binary too); one that never answers: the timeout error after requestsTimeout, with the others' answers`, async () => {
    const r = await cluster;
    assert.deepEqual(r.notes, [[], ['note'], ['note']]);
    assert.deepEqual(withoutMs(r.withAck), { err: null, responses: ['2:q:02', '3:q:03'] });
    assert.deepEqual(withoutMs(r.silent), { err: 'timeout reached: missing 1 responses', responses: ['2:silent:02'] });
    // requestsTimeout is 3000 ms: ended by that timer, not hanging.
    assert.ok(r.silent.ms >= 2990 && r.silent.ms < 9000, `ended after ${r.silent.ms} ms`);
  });

  test(`${transport}: fetchSockets returns every server's sockets, or a room's; client acks come from every server's clients`, async () => {
    const r = await cluster;
    assert.deepEqual(r.fetchAll, names('w1a:a', 'w1b:b', 'w2a:a', 'w2b:b', 'w3a:a', 'w3b:b'));
    assert.deepEqual(r.fetchRoom, names('w1b:b', 'w2b:b', 'w3b:b'));
    assert.deepEqual(withoutMs(r.clientAcks), { err: null, responses: everyone });
  });

  test(`${transport}: broadcasts with client acks: binary answers stay binary; nobody to ask: [] at once; a client that never answers: the timeout error after the timeout, with the others' answers`, async () => {
    const r = await cluster;
    assert.deepEqual(withoutMs(r.binaryAcks), { err: null, responses: everyone.map((name) => `bin:${name}`) });
    // The timeout is 10 s: no error means every server said it had no client to wait for.
    assert.deepEqual(withoutMs(r.noClientAcks), { err: null, responses: [] });
    assert.deepEqual(withoutMs(r.someAcks), { err: 'operation has timed out', responses: everyone.filter((name) => name !== 'w3b') });
    assert.ok(r.someAcks.ms >= 1990 && r.someAcks.ms < 8000, `ended after ${r.someAcks.ms} ms (the timeout is 2000)`);
  });

  test(`${transport}: socketsJoin, socketsLeave and disconnectSockets act on every server`, async () => {
    const r = await cluster;
    assert.deepEqual(r.joined, each(['w1a', 'w2a', 'w3a'], 'to-c'));
    assert.deepEqual(r.fetchJoined, names('w1a:a,c', 'w2a:a,c', 'w3a:a,c'));
    assert.deepEqual(r.left, {});
    assert.deepEqual(r.disconnectedRoom, ['io server disconnect', 'io server disconnect', 'io server disconnect']);
    assert.deepEqual(r.fetchAfterDisconnect, names('w1a:a', 'w2a:a', 'w3a:a'));
    assert.deepEqual(r.disconnectedAll, ['io server disconnect', 'io server disconnect', 'io server disconnect']);
    assert.deepEqual(r.exited, [0, 0, 0], 'each server exits by itself after io.close()');
  });

  test(`${transport}: a server killed -9 while requests wait for it: they settle with the others' answers, not at the timeout`, async () => {
    // requestsTimeout, heartbeatTimeout and the emit's timeout are 60 s, beyond this run's limit:
    // only the bus seeing the server die can settle them in time, and a timeout would be an error.
    const r = await resultOf('socketio.mjs', { args: ['kill'], transport, timeout: 40_000 });
    assert.deepEqual(withoutMs(r.withAck), { err: null, responses: ['2:q:02'] });
    assert.deepEqual(withoutMs(r.clientAcks), { err: null, responses: ['w1a', 'w2a'] });
    assert.deepEqual(r.fetchAfterKill, ['w1a:a', 'w2a:a']);
    assert.deepEqual(withoutMs(r.withAckAfterKill), { err: null, responses: ['1:again:01'] });
    assert.deepEqual(r.exited, [0, 0], 'each server exits by itself after io.close(): the 60 s timer of its emit with client acks is cleared');
  });
}

for (const transport of transports.filter((t) => t !== 'process')) {
  // ('process' needs a hub: two servers of one program there would be buses of one.)
  test(`${transport}: without \`bus\`, each adapter opens 'socket.io' under an id of its own, and io.close() closes it`, async () => {
    // The program must exit by itself after io.close(): an open bus would keep it running.
    const r = await resultOf('socketio-default.mjs', { transport, timeout: 20_000 });
    assert.deepEqual(r, { ids: ['socket.io-HOST-PID-R', 'socket.io-HOST-PID-R'], answers: { err: null, responses: ['2:x'] } });
  });
}

test('importing shmbus loads no socket.io; shmbus/socket.io loads from ESM and CommonJS', () => {
  const script = `
    await import('shmbus');
    const loaded = () => Object.keys(require.cache).some((f) => /node_modules[\\\\/]socket\\.io/.test(f));
    const before = loaded();
    const esm = await import('shmbus/socket.io');
    const cjs = require('shmbus/socket.io');
    console.log(JSON.stringify({ before, after: loaded(), esm: typeof esm.createAdapter + typeof esm.setupPrimary, same: esm.createAdapter === cjs.createAdapter }));
  `;
  const r = spawnSync(process.execPath, ['--input-type=commonjs', '-e', `(async () => {${script}})()`], { encoding: 'utf8', cwd: new URL('..', import.meta.url) });
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(JSON.parse(r.stdout), { before: false, after: true, esm: 'functionfunction', same: true });
});
