// shmbus/socket.io: real socket.io servers under node:cluster, real socket.io-client clients, on
// every transport under test (test/fixtures/socketio.mjs); servers that nothing forks (plain
// `node` programs, and PM2's cluster mode) on shm, nats and hybrid (test/fixtures/socketio-server.cjs).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { io as connect } from 'socket.io-client';
import { pm2Home, until } from './helpers/pm2.mjs';
import { resultOf, transportsUnderTest } from './helpers/run.mjs';
import { program } from './helpers/spawn.mjs';

const transports = await transportsUnderTest({ hybrid: true });
const names = (...list) => list.sort();
const everyone = names('w1a', 'w1b', 'w2a', 'w2b', 'w3a', 'w3b');
const withoutMs = ({ ms, ...rest }) => rest;
const each = (list, value) => Object.fromEntries(list.map((name) => [name, [value]]));

for (const transport of transports) {
  const cluster = resultOf('socketio.mjs', { args: ['cluster'], transport, timeout: 60_000 });
  cluster.catch(() => undefined); // reported by each test below

  test(`${transport}: broadcasts reach all, a room, all but a room, this server only, a namespace; several arguments; binary stays binary`, async () => {
    const r = await cluster;
    assert.deepEqual(r.all, each(everyone, 'all'));
    assert.deepEqual(r.allArgs, each(everyone, 'all,n1,bin:0304'));
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

  test(`${transport}: socketsJoin, socketsLeave and disconnectSockets, of all sockets or those in a room, act on every server`, async () => {
    const r = await cluster;
    assert.deepEqual(r.joined, each(['w1a', 'w2a', 'w3a'], 'to-c'));
    assert.deepEqual(r.fetchJoined, names('w1a:a,c', 'w2a:a,c', 'w3a:a,c'));
    assert.deepEqual(r.leftSome, each(['w1b', 'w2b', 'w3b'], 'to-c-b'), 'the sockets in a left c, those in b joined it');
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

const SERVER = new URL('./fixtures/socketio-server.cjs', import.meta.url);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * One client on each server ({ name, port } as the servers print when ready); through them, a
 * broadcast, fetchSockets, serverSideEmit with an ack and a broadcast with client acks, each
 * made on one server, checked on all. Returns the clients, connected.
 */
async function checkCluster(servers) {
  const clients = servers.map(({ name, port }) => {
    const socket = connect(`http://127.0.0.1:${port}`, { transports: ['websocket'], query: { name: `c-${name}` }, reconnection: false, forceNew: true });
    socket.on('question', (cb) => cb(`c-${name}`));
    return socket;
  });
  await Promise.all(clients.map((socket) => new Promise((resolve, reject) => socket.once('connect', resolve).once('connect_error', reject))));
  const call = (socket, event, ...args) => socket.timeout(20_000).emitWithAck(event, ...args);
  const names = servers.map((s) => s.name).sort();
  const clientNames = names.map((name) => `c-${name}`);
  const news = clients.map((socket) => new Promise((resolve) => (socket.once('news', resolve), setTimeout(resolve, 20_000, 'nothing within 20 s').unref())));
  await call(clients[0], 'broadcast', 'hi');
  assert.deepEqual(await Promise.all(news), servers.map(() => `${servers[0].name}:hi`));
  assert.deepEqual(await call(clients[1], 'fetch'), clientNames);
  assert.deepEqual(await call(clients.at(-1), 'ask-servers'), { err: null, responses: names.filter((n) => n !== servers.at(-1).name) });
  assert.deepEqual(await call(clients[0], 'ask-clients'), { err: null, responses: clientNames });
  return clients;
}

for (const transport of transports.filter((t) => t !== 'process')) {
  // (On 'process' servers that nothing forks are buses of one: there is no hub.)
  test(`${transport}: three servers started on their own (plain node programs) form one cluster; each exits by itself after io.close()`, { timeout: 120_000 }, async () => {
    const bus = `sio-alone-${process.pid}`;
    const programs = [1, 2, 3].map((n) =>
      program(SERVER, { env: { SHMBUS_TRANSPORT: transport, SHMBUS_TEST_BUS: bus, SIO_NAME: `s${n}`, SIO_SERVERS: '3' }, name: `socketio-server s${n} on ${transport}` }),
    );
    try {
      const servers = await Promise.all(programs.map((p) => p.line((l) => l.ready, 30_000).then((l) => l.ready)));
      const clients = await checkCluster(servers);
      for (const socket of clients) socket.emit('close');
      const exits = await Promise.all(programs.map((p) => Promise.race([p.exited, sleep(15_000).then(() => 'still running 15 s after io.close()')])));
      for (const socket of clients) socket.close();
      assert.deepEqual(exits, programs.map(() => ({ code: 0, signal: null })), programs.map((p) => p.describe()).join('\n'));
    } finally {
      for (const p of programs) p.kill();
    }
  });

  test(`${transport}: PM2 cluster mode, three instances of one app with createAdapter(), form one cluster`, { timeout: 120_000 }, async () => {
    // On shm the adapter opens its own bus, 'socket.io' (in this PM2's own bus directory); NATS
    // is shared, so there each run names one.
    const pm2 = pm2Home((work) => ({ SHMBUS_TRANSPORT: transport, SHMBUS_TEST_BUS: transport === 'nats' ? `sio-pm2-${process.pid}` : undefined, SIO_SERVERS: '3', SIO_OUT: work }));
    try {
      pm2.run('start', fileURLToPath(SERVER), '--name', 'sio', '-i', '3', '--no-autorestart');
      const read = (name) => {
        const file = path.join(pm2.work, `${name}.json`);
        return fs.existsSync(file) ? JSON.parse(fs.readFileSync(file, 'utf8')).ready : undefined;
      };
      const servers = await until(() => {
        const all = ['pm2-0', 'pm2-1', 'pm2-2'].map(read);
        return all.every(Boolean) ? all : undefined;
      }, 60_000);
      assert.ok(servers, `not every instance got ready; pm2 sees ${JSON.stringify(pm2.described())}`);
      assert.deepEqual(
        pm2.described().map(([, , mode]) => mode),
        ['cluster_mode', 'cluster_mode', 'cluster_mode'],
      );
      for (const socket of await checkCluster(servers)) socket.close();
    } finally {
      pm2.done();
    }
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
