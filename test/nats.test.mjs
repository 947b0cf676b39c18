// The nats transport, with real processes and a real NATS server. Needs a server on
// 127.0.0.1:4222 (`nats-server -a 127.0.0.1`); without one these tests are skipped, except under
// CI (env CI=true) where that is a failure. The reconnect test starts its own server on another
// port (nats-server on PATH or /usr/sbin/nats-server) and never touches the shared one.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { open, ShmbusError } from 'shmbus';
import { freePort, natsServerPath, program, rejection, startNatsServer as startServer, stopNatsServer as stopServer, tcpAnswers } from './helpers/spawn.mjs';

const NATS_URL = 'nats://127.0.0.1:4222';
const MEMBER = fileURLToPath(new URL('./fixtures/nats-member.mjs', import.meta.url));
const CLUSTER = fileURLToPath(new URL('./fixtures/nats-cluster.mjs', import.meta.url));

const canConnect = (port) => tcpAnswers(port, '127.0.0.1', 1000);

const serverUp = await canConnect(4222);
const NO_SERVER = 'no NATS server on 127.0.0.1:4222: start one (`nats-server -a 127.0.0.1`) to run the nats tests';
// Without a server every test is skipped; under CI one test fails and says why.
const skip = serverUp ? false : NO_SERVER;

if (!serverUp && process.env.CI === 'true') {
  test('a NATS server is reachable on 127.0.0.1:4222 (required under CI)', () => {
    assert.fail(NO_SERVER);
  });
}

let buses = 0;
const busName = () => `nt${process.pid}_${++buses}`;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------
// Member programs

/** Kills a program's or a server's whole process group. */
function kill(child, signal = 'SIGKILL') {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // gone already
  }
}

/** Starts a program, collecting its JSON lines (test/helpers/spawn.mjs). */
const start = (file, env) => program(file, { env: { NATS_URL, SHMBUS_TRANSPORT: undefined, ...env } });

/** Resolves the first line of `child` that `match` accepts. */
const line = (child, match, timeout = 10_000) => child.line(match, timeout);

/** Starts test/fixtures/nats-member.mjs as member `id` on `bus` and waits until its bus is open. */
async function member(bus, id, env = {}) {
  const child = start(MEMBER, { BUS: bus, SHMBUS_ID: String(id), ...env });
  await line(child, (l) => l.ready || l.result, 15_000);
  return child;
}

async function openHere(name, id, extra = {}) {
  const bus = await open({ name, id, transport: 'nats', ...extra, nats: { servers: NATS_URL, ...extra.nats } });
  bus.on('error', () => {}); // the tests look at what they expect; errors are not failures here
  return bus;
}

// ---------------------------------------------------------------------------------------------

test('two separately started processes: membership, broadcast, one-to-one, requests, peer:leave on close', { skip, timeout: 30_000 }, async () => {
  const name = busName();
  const me = await openHere(name, 'tester');
  try {
    assert.equal(me.transport, 'nats');
    const joined = new Promise((resolve) => me.on('peer:join', resolve));
    const alpha = await member(name, 'alpha');
    assert.equal(await joined, 'alpha');
    assert.deepEqual(me.peers(), ['alpha']);
    assert.deepEqual((await line(alpha, (l) => l.ready)).peers, ['tester']);

    // A second program: everyone sees everyone.
    const beta = await member(name, 'beta');
    await me.waitFor(['alpha', 'beta'], { timeout: 5000 });
    assert.deepEqual((await me.request('info', null, { to: 'beta' })).peers, ['alpha', 'tester']);

    // Broadcast from one program reaches the others and the sender itself.
    const mine = [];
    me.on('bcast', (data, msg) => mine.push([msg.from, data.n]));
    assert.equal(await me.request('broadcast', { action: 'bcast', data: { n: 7 } }, { to: 'alpha' }), 3);
    const gotBeta = await me.request('got', null, { to: 'beta' });
    assert.deepEqual(gotBeta.map((g) => [g.from, g.n]), [['alpha', 7]]);
    assert.deepEqual((await me.request('got', null, { to: 'alpha' })).map((g) => [g.from, g.n]), [['alpha', 7]]);
    assert.deepEqual(mine, [['alpha', 7]]);

    // Requests: answers, remote errors, no handler, to self.
    assert.deepEqual(await me.request('echo', { a: [1, 2, 3] }, { to: 'alpha' }), { a: [1, 2, 3] });
    const noHandler = await rejection(me.request('nothing', 1, { to: 'beta' }));
    assert.equal(noHandler.code, 'ERR_SHMBUS_NO_HANDLER');
    const timeout = await rejection(me.request('hang', 1, { to: 'beta', timeout: 300 }));
    assert.equal(timeout.code, 'ERR_SHMBUS_TIMEOUT');

    // A member that closes is gone at once, not after the presence expiry.
    const left = new Promise((resolve) => me.on('peer:leave', (id) => resolve({ id, at: Date.now() })));
    const asked = Date.now();
    await me.request('exit', null, { to: 'beta' });
    const { id, at } = await left;
    assert.equal(id, 'beta');
    assert.ok(at - asked < 1000, `peer:leave came ${at - asked} ms after close`);
    assert.deepEqual(me.peers(), ['alpha']);
    await me.request('exit', null, { to: 'alpha' });
    assert.equal((await alpha.exited).code, 0);
    assert.equal((await beta.exited).code, 0);
  } finally {
    await me.close();
  }
});

test('a cluster primary and 4 workers over nats', { skip, timeout: 30_000 }, async () => {
  const child = start(CLUSTER, { BUS: busName() });
  const { result } = await line(child, (l) => l.result, 25_000);
  assert.equal(result.id, 'primary');
  assert.deepEqual(result.peers, [1, 2, 3, 4]);
  assert.deepEqual(result.workers, [
    { id: 1, peers: [2, 3, 4, 'primary'] },
    { id: 2, peers: [1, 3, 4, 'primary'] },
    { id: 3, peers: [1, 2, 4, 'primary'] },
    { id: 4, peers: [1, 2, 3, 'primary'] },
  ]);
  assert.equal(result.sent, 5);
  assert.deepEqual(result.thanks, [1, 2, 3, 4]);
  const { code } = await child.exited;
  assert.equal(code, 0);
});

test('16 MiB payloads arrive whole: a request, its answer, and a broadcast', { skip, timeout: 60_000 }, async () => {
  const name = busName();
  const me = await openHere(name, 'tester');
  const alpha = await member(name, 'alpha');
  const beta = await member(name, 'beta');
  try {
    await me.waitFor(['alpha', 'beta'], { timeout: 5000 });
    const big = Buffer.alloc(16 * 2 ** 20, 0xab);
    big[0] = 1;
    big[big.length - 1] = 2;
    const answer = await me.request('echo', big, { to: 'alpha', timeout: 30_000 });
    assert.equal(answer.length, big.length);
    assert.ok(Buffer.compare(Buffer.from(answer), big) === 0, 'the echo differs');

    // alpha broadcasts 16 MiB: beta and the tester get it whole.
    const mine = new Promise((resolve) => me.on('bcast', (data) => resolve(data)));
    assert.equal(await me.request('bigBroadcast', { size: 16 * 2 ** 20, fill: 7 }, { to: 'alpha', timeout: 30_000 }), 3);
    const data = await mine;
    assert.equal(data.big.length, 16 * 2 ** 20);
    assert.ok(data.big.every((b) => b === 7));
    let got = [];
    for (let i = 0; i < 100 && got.length === 0; i++) {
      got = await me.request('got', null, { to: 'beta', timeout: 30_000 });
      if (got.length === 0) await sleep(50);
    }
    assert.deepEqual(got.map(({ from, size, ok }) => ({ from, size, ok })), [{ from: 'alpha', size: 16 * 2 ** 20, ok: true }]);
  } finally {
    kill(alpha);
    kill(beta);
    await me.close();
  }
});

test('a sender killed in the middle of a 16 MiB message: the receiver gets all of it or none of it', { skip, timeout: 30_000 }, async (t) => {
  const name = busName();
  const me = await openHere(name, 'tester');
  const alpha = await member(name, 'alpha');
  try {
    await me.waitFor('alpha', { timeout: 5000 });
    const got = [];
    me.on('big', (data) => got.push(data));
    const left = new Promise((resolve) => me.on('peer:leave', resolve));
    await me.request('bigThenDie', { to: 'tester', size: 16 * 2 ** 20 }, { to: 'alpha', timeout: 10_000 }).catch(() => {});
    assert.equal(await left, 'alpha');
    await sleep(200);
    t.diagnostic(got.length === 0 ? 'the cut message was dropped' : 'the message had left whole before the kill');
    assert.ok(got.length <= 1);
    for (const data of got) {
      assert.equal(data.length, 16 * 2 ** 20);
      assert.ok(data.every((b) => b === 5));
    }
  } finally {
    kill(alpha);
    await me.close();
  }
});

test('100k messages from one process to another arrive in order, with backpressure and drain()', { skip, timeout: 60_000 }, async (t) => {
  const name = busName();
  // A small queue limit so that the sender meets ERR_SHMBUS_BACKPRESSURE and waits in drain().
  const me = await openHere(name, 'tester', { maxQueueBytes: 256 * 1024 });
  const alpha = await member(name, 'alpha', { MAX_QUEUE: String(256 * 1024) });
  try {
    await me.waitFor('alpha', { timeout: 5000 });
    const n = 100_000;
    // tester -> alpha
    let backpressure = 0;
    const started = Date.now();
    for (let i = 0; i < n; ) {
      try {
        me.sendMessage('seq', i, 'alpha');
        i++;
      } catch (err) {
        assert.equal(err.code, 'ERR_SHMBUS_BACKPRESSURE');
        backpressure++;
        await me.drain();
      }
    }
    let result;
    for (let i = 0; i < 200; i++) {
      result = await me.request('seqResult', null, { to: 'alpha', timeout: 10_000 });
      if (result.count >= n) break;
      await sleep(50);
    }
    assert.deepEqual(result, { count: n, outOfOrder: 0 });
    assert.ok(backpressure > 0, 'the sender never met backpressure');
    const ms = Date.now() - started;
    t.diagnostic(`tester -> alpha: ${n} messages in ${ms} ms, ${backpressure} backpressure waits`);

    // alpha -> tester, driven by a request
    const expected = { next: 0, wrong: 0, count: 0 };
    const all = new Promise((resolve) => {
      me.on('seq', (v, msg) => {
        if (msg.from !== 'alpha') return;
        if (v !== expected.next) expected.wrong++;
        expected.next = v + 1;
        if (++expected.count === n) resolve();
      });
    });
    const flood = await me.request('flood', { to: 'tester', n }, { to: 'alpha', timeout: 40_000 });
    assert.equal(flood.sent, n);
    await all;
    assert.equal(expected.wrong, 0);
    assert.ok(ms < 40_000, `100k messages took ${ms} ms`);
  } finally {
    kill(alpha);
    await me.close();
  }
});

test('kill -9 during a request: ERR_SHMBUS_PEER_GONE within a few seconds, and the same id rejoins', { skip, timeout: 40_000 }, async (t) => {
  const name = busName();
  const me = await openHere(name, 'tester');
  let worker = await member(name, 'worker');
  const bystander = await member(name, 'bystander');
  try {
    await me.waitFor(['worker', 'bystander'], { timeout: 5000 });
    const pending = me.request('hang', null, { to: 'worker', timeout: 30_000 });
    await sleep(100);
    const killedAt = Date.now();
    kill(worker);
    const err = await rejection(pending);
    const ms = Date.now() - killedAt;
    assert.equal(err.code, 'ERR_SHMBUS_PEER_GONE');
    t.diagnostic(`pending request rejected ${ms} ms after kill -9`);
    assert.ok(ms < 3000, `rejected ${ms} ms after kill -9`);
    assert.ok(!me.peers().includes('worker'));

    // A member that dies with nothing pending is seen to leave within the presence expiry.
    const left = new Promise((resolve) => me.on('peer:leave', (id) => id === 'bystander' && resolve(Date.now())));
    const killed2 = Date.now();
    kill(bystander);
    const leftAt = await left;
    t.diagnostic(`peer:leave ${leftAt - killed2} ms after kill -9 of a member with nothing pending`);
    assert.ok(leftAt - killed2 < 3500, `peer:leave ${leftAt - killed2} ms after kill -9`);

    // The same id opens again at once, and works.
    worker = await member(name, 'worker');
    assert.equal((await line(worker, (l) => l.ready || l.result)).ready, true);
    await me.waitFor('worker', { timeout: 5000 });
    assert.deepEqual(await me.request('echo', 'again', { to: 'worker' }), 'again');
  } finally {
    kill(worker);
    kill(bystander);
    await me.close();
  }
});

test('presence tuning: a shorter expiry finds the dead sooner, and allows for members that heartbeat more slowly', { skip, timeout: 30_000 }, async (t) => {
  const name = busName();
  const tuning = { heartbeatInterval: 100, presenceTimeout: 400 };
  const me = await openHere(name, 'tester', { nats: tuning });
  const fast = await member(name, 'fast', { NATS_OPTIONS: JSON.stringify(tuning) });
  const slow = await member(name, 'slow'); // default: a heartbeat every 500 ms
  try {
    await me.waitFor(['fast', 'slow'], { timeout: 5000 });
    const leaves = [];
    me.on('peer:leave', (id) => leaves.push(id));
    const left = new Promise((resolve) => me.on('peer:leave', (id) => id === 'fast' && resolve(Date.now())));
    const killedAt = Date.now();
    kill(fast);
    const ms = (await left) - killedAt;
    t.diagnostic(`peer:leave ${ms} ms after kill -9 with presenceTimeout 400`);
    assert.ok(ms < 1500, `${ms} ms`);
    await sleep(1500);
    assert.deepEqual(leaves, ['fast'], 'a member with a slower heartbeat was taken for dead');
    assert.deepEqual(me.peers(), ['slow']);
  } finally {
    kill(fast);
    kill(slow);
    await me.close();
  }
});

test('ERR_SHMBUS_DUPLICATE_ID for a live id (another process, this process, two at once); UNKNOWN_PEER for an id never seen', { skip, timeout: 30_000 }, async () => {
  const name = busName();
  const me = await openHere(name, 'tester');
  const alpha = await member(name, 'alpha');
  try {
    const err = await rejection(openHere(name, 'alpha'));
    assert.ok(err instanceof ShmbusError);
    assert.equal(err.code, 'ERR_SHMBUS_DUPLICATE_ID');
    assert.equal((await rejection(openHere(name, 'tester'))).code, 'ERR_SHMBUS_DUPLICATE_ID');
    const second = start(MEMBER, { BUS: name, SHMBUS_ID: 'alpha' });
    assert.equal((await line(second, (l) => l.result)).result.code, 'ERR_SHMBUS_DUPLICATE_ID');

    // Two opens of a free id at once: exactly one wins.
    const both = await Promise.allSettled([openHere(name, 'twin'), openHere(name, 'twin')]);
    const won = both.filter((r) => r.status === 'fulfilled');
    const lost = both.filter((r) => r.status === 'rejected');
    assert.equal(won.length, 1, JSON.stringify(both.map((r) => r.reason?.code ?? 'opened')));
    assert.equal(lost[0].reason.code, 'ERR_SHMBUS_DUPLICATE_ID');
    await me.waitFor('twin', { timeout: 5000 });
    await won[0].value.close();

    const unknown = await rejection(me.request('echo', 1, { to: 'never-here' }));
    assert.equal(unknown.code, 'ERR_SHMBUS_UNKNOWN_PEER');
    assert.throws(() => me.sendMessage('x', 1, 12345), { code: 'ERR_SHMBUS_UNKNOWN_PEER' });
  } finally {
    kill(alpha);
    await me.close();
  }
});

test('options: no server is ERR_SHMBUS_TRANSPORT, bad tuning is ERR_SHMBUS_INVALID_ARG', { skip, timeout: 20_000 }, async () => {
  // A port nobody listens on: take a free one and close it.
  const port = await freePort();
  const started = Date.now();
  const err = await rejection(open({ name: busName(), id: 'x', transport: 'nats', nats: { servers: `nats://127.0.0.1:${port}` } }));
  assert.equal(err.code, 'ERR_SHMBUS_TRANSPORT');
  assert.match(err.message, new RegExp(`127\\.0\\.0\\.1:${port}: .*; start one there \\(nats-server\\), or point nats\\.servers at one that runs$`), 'the cause and the fix');
  assert.ok(Date.now() - started < 5000);
  for (const nats of [{ heartbeatInterval: -1 }, { presenceTimeout: 'soon' }, { heartbeatInterval: 1000, presenceTimeout: 1500 }, { subjectPrefix: 'a b' }, { joinWindow: 0 }]) {
    const e = await rejection(open({ name: busName(), id: 'x', transport: 'nats', nats }));
    assert.equal(e.code, 'ERR_SHMBUS_INVALID_ARG', JSON.stringify(nats));
  }
});

test('an open bus keeps the process alive until unref(); after close() the process exits by itself', { skip, timeout: 30_000 }, async () => {
  const name = busName();
  const unrefd = start(MEMBER, { BUS: name, SHMBUS_ID: 'u', MODE: 'unref' });
  const closed = start(MEMBER, { BUS: name, SHMBUS_ID: 'c', MODE: 'close' });
  const kept = await member(name, 'k');
  try {
    assert.equal((await unrefd.exited).code, 0);
    assert.equal((await closed.exited).code, 0);
    await sleep(1000);
    assert.equal(kept.exit, undefined, 'a bus that is open and ref\'d let its process exit');
  } finally {
    kill(kept);
  }
});

// ---------------------------------------------------------------------------------------------
// A server of the test's own

/**
 * Opens 'tester' here and starts member 'alpha' as a program, both on the server at `url`, into
 * `pair` (which closePair() ends, also when this fails half-way); alpha has answered once.
 */
async function openPair(url, pair) {
  const name = busName();
  pair.me = await openHere(name, 'tester', { nats: { servers: url, reconnectTimeWait: 250 } });
  pair.alpha = await member(name, 'alpha', { NATS_URL: url });
  await pair.me.waitFor('alpha', { timeout: 5000 });
  assert.equal(await pair.me.request('echo', 'before', { to: 'alpha' }), 'before');
  return pair;
}

async function closePair({ me, alpha }) {
  if (alpha) kill(alpha);
  await me?.close();
}

/** `to`'s answer once it is a member again after a reconnect (it may have left and rejoined meanwhile); undefined if not within 15 s. */
async function answerOnceBack(me, to, action, data) {
  const deadline = Date.now() + 15_000;
  while (Date.now() < deadline) {
    try {
      await me.waitFor(to, { timeout: 1000 });
      return await me.request(action, data, { to, timeout: 1000 });
    } catch {
      await sleep(100);
    }
  }
  return undefined;
}

test('a NATS server restart: members reconnect, re-announce and go on', { skip: skip || (!natsServerPath() && 'nats-server is not installed'), timeout: 40_000 }, async (t) => {
  const port = await freePort();
  let server = await startServer(port);
  const pair = {};
  try {
    const { me, alpha } = await openPair(`nats://127.0.0.1:${port}`, pair);
    me.sendMessage('m', 0, 'alpha');
    const errors = [];
    me.on('error', (err) => errors.push(err.message));

    await stopServer(server);
    // Sent while the connection is down: lost (at most once), and the receiver says so later.
    for (let i = 1; i <= 20; i++) me.sendMessage('m', i, 'alpha');
    await sleep(500);
    server = await startServer(port);

    // Within a few seconds alpha is a member again.
    assert.equal(await answerOnceBack(me, 'alpha', 'echo', 'after'), 'after');
    assert.ok(errors.some((m) => /lost the connection/.test(m)), `errors: ${JSON.stringify(errors)}`);
    const lost = await line(alpha, (l) => l.note === 'error' && /were lost/.test(l.message), 5000);
    t.diagnostic(`alpha reported: ${lost.message}`);
    // And messages flow in order again.
    const got = [];
    const done = new Promise((resolve) => me.on('seq', (v) => (got.push(v), got.length === 1000 && resolve())));
    await me.request('flood', { to: 'tester', n: 1000 }, { to: 'alpha', timeout: 10_000 });
    await done;
    assert.deepEqual(got, Array.from({ length: 1000 }, (_, i) => i));
  } finally {
    await closePair(pair);
    kill(server);
  }
});

test('an unref()d bus lets its process exit while the NATS server is down', { skip: skip || (!natsServerPath() && 'nats-server is not installed'), timeout: 40_000 }, async () => {
  const port = await freePort();
  const server = await startServer(port);
  let m;
  try {
    m = start(MEMBER, { BUS: busName(), SHMBUS_ID: 'u', MODE: 'unref-later', HOLD_MS: '1500', NATS_URL: `nats://127.0.0.1:${port}` });
    await line(m, (l) => l.ready, 15_000);
    await stopServer(server);
    // The member's own timer ends with the server still down: only the unref()d bus is left.
    await line(m, (l) => l.note === 'released', 10_000);
    const end = await Promise.race([m.exited, sleep(10_000).then(() => 'still running 10 s later')]);
    assert.deepEqual(end, { code: 0, signal: null }, `stdout lines: ${JSON.stringify(m.lines)}; stderr: ${m.stderrText}`);
  } finally {
    if (m) kill(m);
    kill(server);
  }
});

test('requests pending across a NATS server restart settle once: answered after the reconnect or rejected with a clear error; messages after it arrive in order', { skip: skip || (!natsServerPath() && 'nats-server is not installed'), timeout: 60_000 }, async (t) => {
  const port = await freePort();
  let server = await startServer(port);
  const pair = {};
  try {
    const { me } = await openPair(`nats://127.0.0.1:${port}`, pair);

    // Each request settles once; how and when is recorded.
    const outcomes = [];
    const track = (key, ms, timeout) => {
      const asked = Date.now();
      const settled = me.request('slow', { ms, value: key, key }, { to: 'alpha', timeout }).then(
        (value) => ({ key, value }),
        (err) => ({ key, code: err.code, message: err.message }),
      );
      return settled.then((outcome) => {
        outcome.ms = Date.now() - asked;
        outcome.timeout = timeout;
        outcomes.push(outcome);
        return outcome;
      });
    };
    // Answered 3 s after it arrived: by then both members are back.
    const later = track('later', 3000, 12_000);
    // Answered 300 ms after it arrived: while the server is down.
    const inOutage = track('inOutage', 300, 6000);
    // Both have arrived once a later request is answered (one sender's frames come in order).
    assert.deepEqual(await me.request('calls', null, { to: 'alpha' }), { later: 1, inOutage: 1 });
    await stopServer(server);
    // Sent while the server is down.
    const whileDown = track('whileDown', 0, 6000);
    await sleep(700);
    server = await startServer(port);

    const settled = await Promise.all([later, inOutage, whileDown]);
    for (const o of settled) {
      t.diagnostic(`${o.key}: ${o.code ?? `answered ${JSON.stringify(o.value)}`} after ${o.ms} ms (timeout ${o.timeout} ms)`);
      if (o.code === undefined) assert.equal(o.value, o.key, 'the answer is the one to this request');
      else {
        assert.ok(['ERR_SHMBUS_PEER_GONE', 'ERR_SHMBUS_TIMEOUT'].includes(o.code), `${o.key}: ${o.code}: ${o.message}`);
        assert.match(o.message, /alpha/, 'the error names the member');
      }
      // Never later than its timeout (with room for a loaded machine).
      assert.ok(o.ms < o.timeout + 2000, `${o.key} settled after ${o.ms} ms`);
    }
    // Settled once each, and no late second answer comes.
    await sleep(500);
    assert.equal(outcomes.length, 3);

    // Both members are back: requests are answered, and nothing was handled twice.
    const calls = await answerOnceBack(me, 'alpha', 'calls', null);
    assert.ok(calls, 'alpha answers after the reconnect');
    for (const [key, n] of Object.entries(calls)) assert.ok(n <= 1, `'${key}' was handled ${n} times`);
    assert.equal(calls.later, 1, 'the request sent before the restart arrived');
    assert.equal(await me.request('slow', { ms: 10, value: 'after', key: 'after' }, { to: 'alpha', timeout: 5000 }), 'after');

    // Messages sent after the reconnect arrive in order, both ways.
    const n = 2000;
    for (let i = 0; i < n; i++) me.sendMessage('seq', i, 'alpha');
    const got = [];
    const done = new Promise((resolve) => me.on('seq', (v) => (got.push(v), got.length === n && resolve())));
    await me.request('flood', { to: 'tester', n }, { to: 'alpha', timeout: 10_000 });
    await done;
    assert.deepEqual(got, Array.from({ length: n }, (_, i) => i));
    let result;
    for (let i = 0; i < 100; i++) {
      result = await me.request('seqResult', null, { to: 'alpha', timeout: 5000 });
      if (result.count >= n) break;
      await sleep(50);
    }
    assert.deepEqual(result, { count: n, outOfOrder: 0 });
  } finally {
    await closePair(pair);
    kill(server);
  }
});
