// The hybrid transport across hosts, simulated on this machine: each "host" is a bus directory of
// its own (shm.dir), as two containers with separate /tmp would have, with members started as
// separate programs; a NATS server of the suite's own on a free port joins them (the shared one on
// 4222 is never touched, so that it can be stopped and started again). Without nats-server the
// suite is skipped, except under CI (env CI=true) where that is a failure. As root, one run puts
// each host in a mount and UTS namespace of its own (unshare), with its own tmpfs on /tmp and its
// own host name; skipped where unshare is not allowed.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import net from 'node:net';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { open } from 'shmbus';
import { freePort, natsServerPath, program, rejection, shmRuns, startNatsServer, stopNatsServer } from './helpers/spawn.mjs';

const MEMBER = fileURLToPath(new URL('./fixtures/hybrid-member.mjs', import.meta.url));
/** Presence as the members use it here: heartbeats every 250 ms, a member not heard from for 2 s is gone. */
const NATS_OPTIONS = { heartbeatInterval: 250, presenceTimeout: 2000 };
const PRESENCE_EXPIRY = NATS_OPTIONS.presenceTimeout;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const NO_SERVER = 'nats-server is not installed: install it (apt-get install nats-server) to run the hybrid tests';
const NO_SHM = 'the shm transport does not run here, and hybrid needs it';
const shm = await shmRuns();
const skip = !natsServerPath() ? NO_SERVER : !shm ? NO_SHM : false;
if (skip && process.env.CI === 'true') {
  test('nats-server and shm are available (required under CI)', () => assert.fail(skip));
}

let buses = 0;
const busName = () => `hy${process.pid}_${++buses}`;
const root = mkdtempSync(path.join(os.tmpdir(), 'shmbus-hybrid-test-'));
after(() => rmSync(root, { recursive: true, force: true }));

/** A simulated host: a bus-directory root of its own. */
const hostDir = (name) => path.join(root, name);

/** Starts a member program with `id` on `host`; resolves once its bus is open (or refused). */
async function member(ctx, id, host, env = {}) {
  const child = program(MEMBER, {
    name: `member ${id} on ${host}`,
    env: { BUS: ctx.bus, SHMBUS_ID: String(id), NATS_URL: ctx.url, NATS_OPTIONS: JSON.stringify(NATS_OPTIONS), HOST_DIR: hostDir(host), SHMBUS_TRANSPORT: undefined, ...env },
  });
  await child.line((l) => l.ready || l.result, 20_000);
  return child;
}

/** Opens a member in this process (the tester) on `host`. */
async function openHere(ctx, id, host, extra = {}) {
  const bus = await open({ name: ctx.bus, id, transport: 'hybrid', nats: { servers: ctx.url, reconnectTimeWait: 250, ...NATS_OPTIONS }, shm: { dir: hostDir(host) }, ...extra });
  bus.errors = [];
  bus.on('error', (err) => bus.errors.push(err));
  return bus;
}

/** What every member says of how it reaches the others. */
async function viaOf(me, ids) {
  const out = { [me.id]: Object.fromEntries(Object.entries(me.stats().peers).map(([id, p]) => [id, p.via])) };
  for (const id of ids) out[id] = (await me.request('info', null, { to: id, timeout: 5000 })).via;
  return out;
}

/**
 * A TCP proxy to the NATS server at `port` whose server-to-client direction can be held: what the
 * server sends waits in the proxy until release().
 */
async function holdableProxy(port) {
  const pairs = new Set();
  let held = false;
  const server = net.createServer((client) => {
    const upstream = net.connect(port, '127.0.0.1');
    const pair = { client, upstream, waiting: [] };
    pairs.add(pair);
    client.on('data', (d) => upstream.write(d));
    upstream.on('data', (d) => (held ? pair.waiting.push(d) : client.write(d)));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `nats://127.0.0.1:${server.address().port}`,
    hold: () => (held = true),
    release: () => {
      held = false;
      for (const pair of pairs) for (const d of pair.waiting.splice(0)) pair.client.write(d);
    },
    close: () => {
      for (const pair of pairs) {
        pair.client.destroy();
        pair.upstream.destroy();
      }
      return new Promise((resolve) => server.close(resolve));
    },
  };
}

test("a co-located member that sends and leaves before this member has heard its NATS presence: it is reported, its message delivered, then its leave", { skip, timeout: 60_000 }, async () => {
  const port = await freePort();
  const server = await startNatsServer(port);
  const proxy = await holdableProxy(port);
  const ctx = { bus: busName(), url: `nats://127.0.0.1:${port}` };
  let me;
  try {
    me = await openHere({ ...ctx, url: proxy.url }, 'tester', 'A');
    const events = [];
    me.on('peer:join', (id) => events.push(['join', id]));
    me.on('peer:leave', (id) => events.push(['leave', id]));
    me.on('hi', (pid, msg) => events.push(['hi', msg.from, pid]));
    // From here on this member hears nothing from NATS: the newcomer links to it through the
    // rings, hears of it from its heartbeats, sends, and is gone before this member knows it.
    proxy.hold();
    const newcomer = program(MEMBER, {
      name: 'newcomer on A',
      env: { BUS: ctx.bus, SHMBUS_ID: 'newcomer', NATS_URL: ctx.url, NATS_OPTIONS: JSON.stringify(NATS_OPTIONS), HOST_DIR: hostDir('A'), SHMBUS_TRANSPORT: undefined, SEND_AND_CLOSE: 'tester' },
    });
    const ready = await newcomer.line((l) => l.ready || l.result, 20_000);
    assert.ok(ready.ready, newcomer.describe());
    assert.equal((await newcomer.exited).code, 0, newcomer.describe());
    assert.deepEqual(events, [], 'nothing reported while its NATS presence is not heard');
    proxy.release();
    const deadline = Date.now() + 10_000;
    while (events.length < 3 && Date.now() < deadline) await sleep(20);
    assert.deepEqual(events, [['join', 'newcomer'], ['hi', 'newcomer', ready.pid], ['leave', 'newcomer']]);
    assert.deepEqual(me.peers(), []);
    await sleep(PRESENCE_EXPIRY + 500);
    assert.deepEqual(me.errors.map((e) => e.message), [], 'no error once its presence has ended');
    assert.deepEqual(me.peers(), []);
  } finally {
    await me?.close();
    await proxy.close();
    await stopNatsServer(server);
  }
});

describe('hybrid: two hosts, each its own bus directory', { skip, timeout: 240_000 }, () => {
  const ctx = {};
  // Host A: the tester (this process), a1, a2. Host B: b1, b2.
  const A = ['tester', 'a1', 'a2'];
  const B = ['b1', 'b2'];
  const hostOf = (id) => (A.includes(id) ? 'A' : 'B');
  const expectedVia = (ids) =>
    Object.fromEntries(ids.map((me) => [me, Object.fromEntries(ids.map((id) => [id, id === me ? 'self' : hostOf(id) === hostOf(me) ? 'shm' : 'nats']))]));

  before(async () => {
    ctx.port = await freePort();
    ctx.url = `nats://127.0.0.1:${ctx.port}`;
    ctx.server = await startNatsServer(ctx.port);
    ctx.bus = busName();
    ctx.children = {};
    ctx.me = await openHere(ctx, 'tester', 'A');
    const started = await Promise.all([...A.slice(1).map((id) => member(ctx, id, 'A')), ...B.map((id) => member(ctx, id, 'B'))]);
    for (const [i, id] of [...A.slice(1), ...B].entries()) ctx.children[id] = started[i];
    await ctx.me.waitFor([...A, ...B], { timeout: 10_000 });
  });
  after(async () => {
    for (const child of Object.values(ctx.children ?? {})) child.kill();
    await ctx.me?.close();
    if (ctx.server) await stopNatsServer(ctx.server);
  });

  test("via: 'shm' between members of one host, 'nats' across; every member sees every other", async () => {
    const ids = [...A, ...B];
    for (const id of ids.slice(1)) await ctx.me.request('echo', null, { to: id, timeout: 5000 });
    // Each member waits for the rest itself: ask until it knows all of them (a few seconds at most).
    const deadline = Date.now() + 10_000;
    let seen;
    do {
      seen = await viaOf(ctx.me, ids.slice(1));
      if (Object.values(seen).every((v) => Object.keys(v).length === ids.length)) break;
      await sleep(100);
    } while (Date.now() < deadline);
    assert.deepEqual(seen, expectedVia(ids));
    assert.equal(ctx.me.transport, 'hybrid');
    assert.equal(ctx.me.stats().transport, 'hybrid');
  });

  test('a broadcast reaches every member exactly once, the sender included', async () => {
    const ids = [...A, ...B];
    const mine = [];
    ctx.me.on('bc', (n, msg) => mine.push([msg.from, n]));
    // Every member broadcasts 50 numbered messages.
    for (let n = 0; n < 50; n++) ctx.me.sendMessage('bc', n);
    for (const id of ids.slice(1)) for (let n = 0; n < 50; n++) await ctx.me.request('broadcast', n, { to: id });
    const want = ids.flatMap((from) => Array.from({ length: 50 }, (_, n) => [from, n]));
    const sorted = (list) => [...list].sort((x, y) => (x[0] === y[0] ? x[1] - y[1] : x[0] < y[0] ? -1 : 1));
    const deadline = Date.now() + 10_000;
    let got;
    do {
      await sleep(200);
      got = { tester: sorted(mine) };
      for (const id of ids.slice(1)) got[id] = sorted(await ctx.me.request('broadcasts', null, { to: id }));
    } while (Object.values(got).some((list) => list.length < want.length) && Date.now() < deadline);
    // Let any second copy arrive before the count is taken again.
    await sleep(500);
    got = { tester: sorted(mine) };
    for (const id of ids.slice(1)) got[id] = sorted(await ctx.me.request('broadcasts', null, { to: id }));
    for (const id of ids) assert.deepEqual(got[id], sorted(want), `what ${id} received`);
  });

  test('20,000 sequenced messages each way within a host and across hosts: all arrive, in order', { timeout: 120_000 }, async () => {
    const N = 20_000;
    const pairs = [
      ['a1', 'a2'],
      ['a2', 'a1'],
      ['a1', 'b1'],
      ['b1', 'a1'],
      ['b2', 'b1'],
      ['b1', 'b2'],
    ];
    const sent = await Promise.all(pairs.map(([from, to]) => ctx.me.request('flood', { to, n: N }, { to: from, timeout: 90_000 })));
    assert.deepEqual(sent, pairs.map(() => N));
    const want = { a1: { a2: N, b1: N }, a2: { a1: N }, b1: { a1: N, b2: N }, b2: { b1: N } };
    const deadline = Date.now() + 20_000;
    let got;
    do {
      got = {};
      for (const id of Object.keys(want)) got[id] = await ctx.me.request('seqResult', null, { to: id });
      if (Object.entries(want).every(([id, w]) => JSON.stringify(got[id].received) === JSON.stringify(Object.fromEntries(Object.entries(w).map(([k, v]) => [k, v]))))) break;
      await sleep(200);
    } while (Date.now() < deadline);
    for (const [id, w] of Object.entries(want)) {
      assert.deepEqual(got[id], { received: w, outOfOrder: 0 }, `what ${id} received`);
    }
  });

  test('requests across hosts and within one: answers, and remote errors', async () => {
    assert.deepEqual(await ctx.me.request('echo', { x: 1 }, { to: 'b1', timeout: 5000 }), { x: 1 });
    assert.deepEqual(await ctx.me.request('echo', { x: 2 }, { to: 'a1', timeout: 5000 }), { x: 2 });
    // b2 asks a2 (across) and b1 (its own host) on the test's behalf.
    assert.deepEqual(await ctx.me.request('ask', { to: 'a2', action: 'echo', data: 'b2->a2' }, { to: 'b2', timeout: 10_000 }), 'b2->a2');
    assert.deepEqual(await ctx.me.request('ask', { to: 'b1', action: 'echo', data: 'b2->b1' }, { to: 'b2', timeout: 10_000 }), 'b2->b1');
    const err = await rejection(ctx.me.request('nothing', null, { to: 'b2', timeout: 5000 }));
    assert.equal(err.code, 'ERR_SHMBUS_NO_HANDLER');
  });

  test('an id held on the other host, or on this one, is refused ERR_SHMBUS_DUPLICATE_ID', async () => {
    const across = await rejection(openHere(ctx, 'a1', 'B'));
    assert.equal(across.code, 'ERR_SHMBUS_DUPLICATE_ID');
    assert.match(across.message, /^member id "a1" of bus "\S+" is held by a live member on the NATS server/);
    const here = await rejection(openHere(ctx, 'b1', 'B'));
    assert.equal(here.code, 'ERR_SHMBUS_DUPLICATE_ID');
    assert.match(here.message, new RegExp(`^member id "b1" of bus "\\S+" is held by process ${ctx.children.b1.pid} `));
    const child = program(MEMBER, { env: { BUS: ctx.bus, SHMBUS_ID: 'b2', NATS_URL: ctx.url, NATS_OPTIONS: JSON.stringify(NATS_OPTIONS), HOST_DIR: hostDir('A'), SHMBUS_TRANSPORT: undefined } });
    const refused = await child.line((l) => l.result, 20_000);
    assert.equal(refused.result.code, 'ERR_SHMBUS_DUPLICATE_ID', 'a program on host A opening as b2, a member on host B');
    assert.deepEqual(ctx.me.peers(), [...A.slice(1), ...B].sort(), 'the refused never joined');
  });

  test('a member on transport nats is refused by name on both sides', async () => {
    const child = await member(ctx, 'plain', 'A', { TRANSPORT: 'nats' });
    try {
      const theirs = await child.line((l) => l.note === 'error' && l.code === 'ERR_SHMBUS_TRANSPORT', 10_000);
      assert.match(theirs.message, /^member "\S+" of bus "\S+" uses the "hybrid" transport, this one "nats": members of one bus use one transport/);
      const deadline = Date.now() + 5000;
      while (!ctx.me.errors.some((e) => /"plain"/.test(e.message)) && Date.now() < deadline) await sleep(50);
      const mine = ctx.me.errors.find((e) => /"plain"/.test(e.message));
      assert.equal(mine?.code, 'ERR_SHMBUS_TRANSPORT');
      assert.match(mine.message, /^member "plain" of bus "\S+" uses the "nats" transport, this one "hybrid"/);
      assert.ok(!ctx.me.peers().includes('plain'));
      assert.deepEqual((await ctx.me.request('info', null, { to: 'b1' })).peers.includes('plain'), false);
    } finally {
      child.kill();
    }
  });

  test("members on transport shm and hybrid members of one host refuse each other by name on both sides, whichever comes first; each transport's members go on", { timeout: 60_000 }, async () => {
    const refusal = (id, theirs, mine) => new RegExp(`^member "${id}" of bus "\\S+" uses the "${theirs}" transport, this one "${mine}": members of one bus use one transport, so it is not counted as a member`);
    const until = async (what, ok) => {
      const deadline = Date.now() + 10_000;
      while (!ok() && Date.now() < deadline) await sleep(50);
      assert.ok(ok(), what);
    };
    for (const [host, shmFirst] of [['C', true], ['D', false]]) {
      const order = shmFirst ? 'shm first' : 'hybrid first';
      const shmId = `s${host}`;
      const hyId = `h${host}`;
      const children = [];
      let plain;
      let plain2;
      try {
        const openPlain = async () => {
          plain = await open({ name: ctx.bus, id: shmId, transport: 'shm', shm: { dir: hostDir(host) } });
          plain.errors = [];
          plain.on('error', (err) => plain.errors.push(err));
          // A second shm member, as a program of its own.
          plain2 = await member(ctx, `${shmId}2`, host, { TRANSPORT: 'shm' });
          children.push(plain2);
        };
        if (shmFirst) await openPlain();
        const hy = await member(ctx, hyId, host);
        children.push(hy);
        if (!shmFirst) await openPlain();
        // The hybrid member's side: both shm members, by name.
        for (const id of [shmId, `${shmId}2`]) {
          const said = await hy.line((l) => l.note === 'error' && l.message.includes(`"${id}"`), 10_000);
          assert.equal(said.code, 'ERR_SHMBUS_TRANSPORT', order);
          assert.match(said.message, refusal(id, 'shm', 'hybrid'), order);
        }
        // The shm members' side: the hybrid member, by name.
        await until(`${order}: ${shmId} refuses ${hyId}`, () => plain.errors.some((e) => e.message.includes(`"${hyId}"`)));
        const mine = plain.errors.filter((e) => e.message.includes(`"${hyId}"`));
        assert.equal(mine.length, 1, order);
        assert.equal(mine[0].code, 'ERR_SHMBUS_TRANSPORT', order);
        assert.match(mine[0].message, refusal(hyId, 'hybrid', 'shm'), order);
        const theirs = await plain2.line((l) => l.note === 'error' && l.message.includes(`"${hyId}"`), 10_000);
        assert.match(theirs.message, refusal(hyId, 'hybrid', 'shm'), `${order}: what ${shmId}2 said`);
        // Each transport's bus goes on, without the other's members.
        await plain.waitFor(`${shmId}2`, { timeout: 10_000 });
        assert.deepEqual(plain.peers(), [`${shmId}2`], order);
        assert.equal(await plain.request('echo', order, { to: `${shmId}2`, timeout: 5000 }), order);
        await ctx.me.waitFor(hyId, { timeout: 10_000 });
        assert.equal(await ctx.me.request('echo', order, { to: hyId, timeout: 5000 }), order);
        const info = await ctx.me.request('info', null, { to: hyId, timeout: 5000 });
        assert.ok(!info.peers.includes(shmId) && !info.peers.includes(`${shmId}2`), `${order}: ${JSON.stringify(info.peers)}`);
        assert.ok(!ctx.me.peers().includes(shmId));
      } finally {
        for (const child of children) child.kill();
        await plain?.close();
      }
      await until(`${hyId} gone`, () => !ctx.me.peers().includes(hyId));
    }
  });

  test("transport 'auto' with a nats section is hybrid (the addon loads here)", async () => {
    const bus = await open({ name: ctx.bus, id: 'auto1', nats: { servers: ctx.url, ...NATS_OPTIONS }, shm: { dir: hostDir('A') } });
    try {
      assert.equal(bus.transport, 'hybrid');
      await bus.waitFor(['a1', 'b1'], { timeout: 10_000 });
      assert.equal(bus.stats().peers.a1.via, 'shm');
      assert.equal(bus.stats().peers.b1.via, 'nats');
    } finally {
      await bus.close();
    }
  });

  test('a late joiner on each host: its via, and it gets broadcasts once', async () => {
    const joins = [];
    ctx.me.on('peer:join', (id) => joins.push(id));
    ctx.children.a3 = await member(ctx, 'a3', 'A');
    ctx.children.b3 = await member(ctx, 'b3', 'B');
    await ctx.me.waitFor(['a3', 'b3'], { timeout: 10_000 });
    assert.deepEqual(joins.filter((id) => id === 'a3' || id === 'b3').sort(), ['a3', 'b3']);
    assert.equal(ctx.me.stats().peers.a3.via, 'shm');
    assert.equal(ctx.me.stats().peers.b3.via, 'nats');
    const all = ['tester', 'a1', 'a2', 'a3', 'b1', 'b2', 'b3'];
    let via;
    const deadline = Date.now() + 10_000;
    do {
      via = {
        a3: (await ctx.me.request('info', null, { to: 'a3' })).via,
        b3: (await ctx.me.request('info', null, { to: 'b3' })).via,
      };
      if (Object.keys(via.a3).length === all.length && Object.keys(via.b3).length === all.length) break;
      await sleep(100);
    } while (Date.now() < deadline);
    const hostOf3 = (id) => (id.startsWith('b') ? 'B' : 'A');
    const wantOf = (me) => Object.fromEntries(all.map((id) => [id, id === me ? 'self' : hostOf3(id) === hostOf3(me) ? 'shm' : 'nats']));
    assert.deepEqual(via, { a3: wantOf('a3'), b3: wantOf('b3') });
    ctx.me.sendMessage('bc', 'late');
    await ctx.me.request('broadcast', 'late-b1', { to: 'b1' });
    await sleep(1000);
    for (const id of ['a3', 'b3']) {
      const got = (await ctx.me.request('broadcasts', null, { to: id })).filter(([, n]) => typeof n === 'string');
      assert.deepEqual(got.sort(), [['b1', 'late-b1'], ['tester', 'late']], `what ${id} received`);
    }
  });

  test("the transport's via(): 'shm' or 'nats' for a member it reported; undefined for an unknown id, and for one that died (never 'nats')", { timeout: 60_000 }, async () => {
    const { createHybridTransport } = await import('../dist/transports/hybrid.js');
    const joined = new Set();
    const left = new Set();
    const host = { frame() {}, join: (id) => joined.add(id), leave: (id) => left.add(id), error() {}, writable() {} };
    const options = { shm: { dir: hostDir('A') }, nats: { servers: ctx.url, ...NATS_OPTIONS } };
    const transport = createHybridTransport({ busName: ctx.bus, id: 'direct', host, maxMessageSize: 2 ** 20, maxQueueBytes: 2 ** 20, options });
    const until = async (what, ok) => {
      const deadline = Date.now() + 15_000;
      while (!ok() && Date.now() < deadline) await sleep(50);
      assert.ok(ok(), what);
    };
    await transport.open();
    const a9 = await member(ctx, 'a9', 'A');
    const b9 = await member(ctx, 'b9', 'B');
    try {
      await until('a1, b1, a9 and b9 reported', () => ['a1', 'b1', 'a9', 'b9'].every((id) => joined.has(id) || transport.peers().includes(id)));
      assert.deepEqual(['a1', 'a9', 'b1', 'b9'].map((id) => transport.via(id)), ['shm', 'shm', 'nats', 'nats']);
      assert.equal(transport.via('nobody'), undefined);
      assert.equal(transport.via(12345), undefined);
      a9.kill();
      b9.kill();
      await until('a9 and b9 left', () => left.has('a9') && left.has('b9'));
      assert.equal(transport.via('a9'), undefined);
      assert.equal(transport.via('b9'), undefined);
      assert.ok(!ctx.me.peers().includes('a9'));
      assert.equal(ctx.me.stats().peers.a9, undefined);
    } finally {
      a9.kill();
      b9.kill();
      await transport.close();
    }
    await until('b9 gone at the tester too', () => !ctx.me.peers().includes('b9'));
    assert.equal(ctx.me.stats().peers.b9, undefined);
  });

  test("a member whose presence says it shares this host's bus directory but that never links through it: an 'error' event, never a member", async () => {
    // Another NATS client speaks for a 'ghost' with the tester's own locality key (read from the
    // tester's presence): a member of host A by its key, with no shm link to anyone.
    const { connect } = await import('@nats-io/transport-node');
    const nc = await connect({ servers: ctx.url });
    const sub = nc.subscribe('shmbus.*.p');
    let subject;
    let key;
    for await (const m of sub) {
      const c = JSON.parse(new TextDecoder().decode(m.data));
      if (c.id === 'tester' && typeof c.k === 'string') {
        ({ subject } = m);
        key = c.k;
        break;
      }
    }
    const hb = () => nc.publish(subject, new TextEncoder().encode(JSON.stringify({ t: 'hb', id: 'ghost', e: 7, i: 'ghost', h: 250, x: 'hybrid', k: key })));
    hb();
    const beat = setInterval(hb, 250);
    try {
      const deadline = Date.now() + 15_000;
      while (!ctx.me.errors.some((e) => /"ghost"/.test(e.message)) && Date.now() < deadline) await sleep(100);
      const err = ctx.me.errors.find((e) => /"ghost"/.test(e.message));
      assert.equal(err?.code, 'ERR_SHMBUS_TRANSPORT');
      assert.match(err.message, /^member "ghost" of bus "\S+" says it uses this member's bus directory \S+, but no shm link to it came up within 5000 ms; it is not counted as a member until one does$/);
      assert.ok(!ctx.me.peers().includes('ghost'), 'not a member here');
      assert.ok(!(await ctx.me.request('info', null, { to: 'a1' })).peers.includes('ghost'), 'nor at a1, on the same host');
    } finally {
      clearInterval(beat);
      await nc.close();
    }
    // Members on host B took it for a remote member (its key is not theirs): wait until it expires there.
    const deadline = Date.now() + 10_000;
    while ((await ctx.me.request('info', null, { to: 'b1' })).peers.includes('ghost') && Date.now() < deadline) await sleep(200);
    assert.ok(!(await ctx.me.request('info', null, { to: 'b1' })).peers.includes('ghost'));
  });

  test('kill -9 with a request pending: PEER_GONE within 1 s on the same host, within the presence expiry + 1 s across', async (t) => {
    const near = ctx.me.request('hang', null, { to: 'a3', timeout: 30_000 });
    const far = ctx.me.request('hang', null, { to: 'b3', timeout: 30_000 });
    await sleep(200);
    const when = async (promise) => {
      const err = await rejection(promise);
      return { code: err.code, at: Date.now() };
    };
    const nearDone = when(near);
    const farDone = when(far);
    const killedAt = Date.now();
    ctx.children.a3.kill();
    ctx.children.b3.kill();
    const [n, f] = await Promise.all([nearDone, farDone]);
    t.diagnostic(`PEER_GONE after ${n.at - killedAt} ms co-located, ${f.at - killedAt} ms remote`);
    assert.equal(n.code, 'ERR_SHMBUS_PEER_GONE');
    assert.equal(f.code, 'ERR_SHMBUS_PEER_GONE');
    assert.ok(n.at - killedAt <= 1000, `co-located: PEER_GONE after ${n.at - killedAt} ms`);
    assert.ok(f.at - killedAt <= PRESENCE_EXPIRY + 1000, `remote: PEER_GONE after ${f.at - killedAt} ms`);
    assert.ok(!ctx.me.peers().includes('a3') && !ctx.me.peers().includes('b3'));
    delete ctx.children.a3;
    delete ctx.children.b3;
  });

  test('the NATS server stops: co-located members go on; it starts again: the remote side rejoins', { timeout: 60_000 }, async () => {
    await stopNatsServer(ctx.server);
    // Past the presence expiry: the remote members are gone, the local ones stay.
    await sleep(PRESENCE_EXPIRY + 1000);
    assert.deepEqual(ctx.me.peers(), ['a1', 'a2'], 'only the members of this host are left');
    assert.equal(ctx.me.stats().peers.a1.via, 'shm');
    // Local traffic while the server is down: requests, and a flood between a1 and a2.
    assert.equal(await ctx.me.request('echo', 'no server', { to: 'a1', timeout: 5000 }), 'no server');
    const got = [];
    const done = new Promise((resolve) => ctx.me.on('seq', (v, msg) => msg.from === 'a2' && (got.push(v), got.length === 5000 && resolve())));
    await ctx.me.request('flood', { to: 'tester', n: 5000 }, { to: 'a2', timeout: 30_000 });
    await done;
    assert.deepEqual(got, Array.from({ length: 5000 }, (_, i) => i), 'what a2 sent the tester, the server down');
    assert.equal(await ctx.me.request('ask', { to: 'a2', action: 'echo', data: 'a1->a2' }, { to: 'a1', timeout: 5000 }), 'a1->a2');

    ctx.server = await startNatsServer(ctx.port);
    await ctx.me.waitFor(['b1', 'b2'], { timeout: 15_000 });
    assert.equal(ctx.me.stats().peers.b1.via, 'nats');
    const deadline = Date.now() + 15_000;
    let answer;
    while (Date.now() < deadline) {
      try {
        answer = await ctx.me.request('ask', { to: 'a2', action: 'echo', data: 'back' }, { to: 'b1', timeout: 2000 });
        break;
      } catch {
        await sleep(200);
      }
    }
    assert.equal(answer, 'back', 'b1 on host B reaches a2 on host A again');
    assert.equal(await ctx.me.request('echo', 'after', { to: 'b2', timeout: 5000 }), 'after');
    assert.deepEqual(ctx.me.peers(), ['a1', 'a2', 'b1', 'b2']);
  });
});

/** Whether this process may make mount and UTS namespaces (root, and unshare allowed here). */
function unshareWorks() {
  if (process.getuid?.() !== 0) return 'not root: unshare --mount --uts needs root';
  const r = spawnSync('unshare', ['--mount', '--uts', 'sh', '-c', 'mount -t tmpfs tmpfs /tmp && hostname probe'], { encoding: 'utf8' });
  if (r.error) return `unshare can't run: ${r.error.message}`;
  if (r.status !== 0) return `unshare --mount --uts is not allowed here: ${(r.stderr || '').trim()}`;
  return false;
}

const noNamespaces = skip || unshareWorks();

test('hosts in mount and UTS namespaces of their own (own tmpfs /tmp, own host name, default bus directory): remote to each other, local within', { skip: noNamespaces, timeout: 90_000 }, async () => {
  const port = await freePort();
  const url = `nats://127.0.0.1:${port}`;
  const server = await startNatsServer(port);
  const bus = busName();
  const hosts = [];
  try {
    // One program per host: unshare, a fresh /tmp, a host name, then two members with default
    // options (bus directory under the namespace's /tmp). The checkout may itself be under /tmp
    // (a CI clone often is): it is bound elsewhere first and bound back at its path on the new /tmp.
    const repo = fileURLToPath(new URL('..', import.meta.url)).replace(/\/$/, '');
    const hold = repo.startsWith('/mnt') ? '/srv' : '/mnt';
    const keepRepo = `mount --bind "${repo}" ${hold} && mount -t tmpfs tmpfs /tmp && mkdir -p "${repo}" && mount --bind ${hold} "${repo}"`;
    for (const [host, ids] of [['ns-host-a', ['x1', 'x2']], ['ns-host-b', ['y1', 'y2']]]) {
      const script = `${keepRepo} && hostname ${host} && ${ids.map((id) => `SHMBUS_ID=${id} "${process.execPath}" "${MEMBER}" &`).join(' ')} wait`;
      hosts.push(
        program(new URL('./fixtures/hybrid-host.mjs', import.meta.url), {
          name: host,
          args: [script],
          env: { BUS: bus, NATS_URL: url, NATS_OPTIONS: JSON.stringify(NATS_OPTIONS), HOST_DIR: undefined, SHMBUS_DIR: undefined, XDG_RUNTIME_DIR: undefined, TMPDIR: undefined, SHMBUS_TRANSPORT: undefined },
        }),
      );
    }
    for (const [i, ids] of [['x1', 'x2'], ['y1', 'y2']].entries()) {
      for (const id of ids) await hosts[i].line((l) => l.ready && l.id === id, 20_000);
    }
    // This process is a third host (a bus directory of its own) that asks the others.
    const me = await open({ name: bus, id: 'asker', transport: 'hybrid', nats: { servers: url, ...NATS_OPTIONS }, shm: { dir: path.join(root, 'asker') } });
    try {
      const ids = ['x1', 'x2', 'y1', 'y2'];
      await me.waitFor(ids, { timeout: 10_000 });
      const want = (self) => {
        const host = (id) => (id === 'asker' ? 'c' : id[0]);
        return Object.fromEntries(['asker', ...ids].map((id) => [id, id === self ? 'self' : host(id) === host(self) ? 'shm' : 'nats']));
      };
      const deadline = Date.now() + 10_000;
      let seen;
      do {
        seen = {};
        for (const id of ids) seen[id] = (await me.request('info', null, { to: id, timeout: 5000 })).via;
        if (Object.values(seen).every((v) => Object.keys(v).length === 5)) break;
        await sleep(100);
      } while (Date.now() < deadline);
      assert.deepEqual(seen, Object.fromEntries(ids.map((id) => [id, want(id)])));
      assert.deepEqual(me.stats().peers.x1.via, 'nats');
      // A broadcast from x1 reaches each member once.
      await me.request('broadcast', 'ns', { to: 'x1' });
      await sleep(1000);
      for (const id of ids) assert.deepEqual(await me.request('broadcasts', null, { to: id }), [['x1', 'ns']], `what ${id} received`);
    } finally {
      await me.close();
    }
  } finally {
    for (const h of hosts) h.kill();
    await stopNatsServer(server);
  }
});
