// Faults: members killed -9, stopped, leaving without close(), a cluster primary killed under
// separately started members, and join/die churn; every message checked by sequence number and
// content (test/fixtures/reliability-lib.mjs). The programs are in test/fixtures/reliability-faults.mjs.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { run, transportsUnderTest } from './helpers/run.mjs';

const transports = await transportsUnderTest();
const shm = transports.includes('shm');
const noShm = shm ? false : 'the shm transport does not run here';
const MiB = 2 ** 20;

// --expose-gc: the members measure RSS after a full GC, so that memory bounds are about what is
// kept, not about garbage Buffers V8 has yet to collect.
const env = { NODE_OPTIONS: `${process.env.NODE_OPTIONS ?? ''} --expose-gc`.trim() };

async function scenario(transport, name, options, timeout) {
  const r = await run('reliability-faults.mjs', { transport, env, args: [name, JSON.stringify(options)], timeout });
  assert.equal(r.code, 0, r.describe());
  assert.ok(r.result, `no result: ${r.describe()}`);
  assert.equal(r.result.failed, undefined, `the run failed: ${r.result.failed}\n${r.describe()}`);
  assert.equal(r.result.stuck, undefined, `the run stuck: ${JSON.stringify(r.result.stuck)}\n${r.describe()}`);
  return r.result;
}

const exitOf = { SIGKILL: { code: null, signal: 'SIGKILL' }, exit: { code: 0, signal: null }, throw: { code: 1, signal: null } };

/** Requests pending at a member when it died rejected with PEER_GONE; later ones are refused. */
function checkRounds(rounds, victims) {
  assert.equal(rounds.length, victims);
  for (const round of rounds) {
    assert.deepEqual(round.exit, exitOf[round.how], `${round.id} died by ${round.how}`);
    assert.deepEqual(
      round.hang.map((h) => h.code),
      ['ERR_SHMBUS_PEER_GONE', 'ERR_SHMBUS_PEER_GONE', 'ERR_SHMBUS_PEER_GONE'],
      `requests pending at ${round.id} (timeout 60 s) when it died by ${round.how}`,
    );
    assert.equal(round.after.length, 1);
    assert.ok(['ERR_SHMBUS_UNKNOWN_PEER', 'ERR_SHMBUS_PEER_GONE'].includes(round.after[0].code), `a request to ${round.id} once it is gone: ${round.after[0].code}`);
  }
}

/** What `receiver` got from `sender`: every message, in order, intact, as many as were sent. */
function checkComplete(reports, flood, receiver, sender) {
  const got = reports[receiver][sender];
  assert.ok(got, `${receiver} got nothing from ${sender}`);
  assert.deepEqual(got.errors, [], `${receiver} from ${sender}`);
  assert.equal(got.errorCount, 0);
  const sent = flood[sender].sent[receiver];
  assert.ok(sent > 0, `${sender} sent nothing to ${receiver}`);
  assert.equal(got.fin, sent, `${sender} says it sent ${sent} to ${receiver}`);
  assert.equal(got.got, sent, `${receiver} got ${got.got} of ${sent} from ${sender}`);
}

/** What `receiver` got from a member that died: a clean prefix (no gap, duplicate or corruption). */
function checkPrefix(reports, receiver, sender) {
  const got = reports[receiver][sender];
  if (!got) return;
  assert.deepEqual(got.errors, [], `${receiver} from ${sender}, which died`);
  assert.equal(got.errorCount, 0);
}

describe('reliability: faults', () => {
  test('shm: kill -9, exit without close() and uncaught exceptions at random points of a flood; pending requests reject with PEER_GONE; survivors lose nothing', { skip: noShm, timeout: 120_000 }, async () => {
    const victims = 8;
    const r = await scenario('shm', 'kill', { victims, ringSize: 64 * 1024 }, 110_000);
    checkRounds(r.rounds, victims);
    checkComplete(r.reports, r.flood, 'm1', 'm2');
    checkComplete(r.reports, r.flood, 'm2', 'm1');
    for (const round of r.rounds) {
      checkPrefix(r.reports, 'm1', round.id);
      checkPrefix(r.reports, 'm2', round.id);
      for (const m of ['m1', 'm2']) assert.ok(!(round.id in r.flood[m].sent) || r.flood[m].dead.includes(round.id), `${m} stopped sending to ${round.id}`);
    }
    const toVictims = r.rounds.reduce((n, round) => n + (r.flood.m1.sent[round.id] ?? 0) + (r.flood.m2.sent[round.id] ?? 0), 0);
    assert.ok(toVictims > 0, 'the survivors sent to the victims at all');
    assert.deepEqual(r.peers, ['m1', 'm2']);
  });

  test('process: kill -9, exit without close() and an uncaught exception with requests pending reject them with PEER_GONE', { skip: !transports.includes('process'), timeout: 60_000 }, async () => {
    // No flood here: on 'process' the IPC channel that carries the test's commands carries the frames too.
    const r = await scenario('process', 'kill', { victims: 4, flood: false }, 50_000);
    checkRounds(r.rounds, 4);
  });

  test('shm: a SIGSTOPped receiver: the sender is refused with BACKPRESSURE at maxQueueBytes, stays bounded, and after SIGCONT nothing accepted is lost', { skip: noShm, timeout: 60_000 }, async () => {
    const maxQueueBytes = 8 * MiB;
    const size = 65536;
    const total = 2000; // 125 MiB through an 8 MiB queue
    const r = await scenario('shm', 'stop', { maxQueueBytes, size, total, tryMs: 1500 }, 50_000);
    const f = r.fill;
    assert.deepEqual(r.peersWhileStopped, ['coord', 'r'], 'a stopped member is still a member');
    assert.equal(f.firstRefusal, 'ERR_SHMBUS_BACKPRESSURE');
    assert.ok(f.acceptedBytes <= maxQueueBytes, `accepted ${f.acceptedBytes} bytes for a stopped member`);
    assert.ok(f.acceptedBytes >= maxQueueBytes / 2, `refused already at ${f.acceptedBytes} bytes`);
    assert.ok(f.queuedAtRefusal <= maxQueueBytes + 64 * 1024, `queued ${f.queuedAtRefusal}`);
    assert.equal(f.queuedAfter, f.queuedAtRefusal, 'nothing more was queued while it stayed stopped');
    assert.ok(f.tries > 100, `only ${f.tries} tries`);
    assert.deepEqual(f.refusals, { ERR_SHMBUS_BACKPRESSURE: f.tries }, 'every try while stopped is refused');
    // Native queue memory is bounded by maxQueueBytes; the slack is V8's garbage from the tries.
    const slack = 64 * MiB;
    assert.ok(f.rssAfter - f.rssBefore <= maxQueueBytes + slack, `sender RSS grew by ${(f.rssAfter - f.rssBefore) / MiB} MiB while refused`);
    assert.ok(r.finish.rssMax - f.rssBefore <= maxQueueBytes + slack, `sender RSS grew by ${(r.finish.rssMax - f.rssBefore) / MiB} MiB in all`);
    assert.equal(r.finish.seq, total);
    assert.ok(r.finish.backpressure > 0, 'a slow queue refuses again after SIGCONT');
    assert.deepEqual(r.report.s, { got: total, bytes: total * (16 + size), errors: [], errorCount: 0, fin: total });
    // A member that joined while r was stopped: open() resolved without r, the link came after SIGCONT.
    assert.ok(!r.latePeersWhileStopped.includes('r'), `joined with r linked while r was stopped: ${r.latePeersWhileStopped}`);
    assert.deepEqual(r.latePeersAfter, ['coord', 'r', 's']);
  });

  test('shm: a cluster primary killed -9 takes its workers; separately started members of the bus go on', { skip: noShm, timeout: 60_000 }, async () => {
    const r = await scenario('shm', 'cluster', {}, 50_000);
    assert.deepEqual(r.primaryExit, { code: null, signal: 'SIGKILL' });
    assert.deepEqual(
      r.hang.map((h) => h.code),
      ['ERR_SHMBUS_PEER_GONE', 'ERR_SHMBUS_PEER_GONE', 'ERR_SHMBUS_PEER_GONE', 'ERR_SHMBUS_PEER_GONE'],
      'requests pending at the primary and at worker 1',
    );
    assert.deepEqual(r.peersOfA, ['b', 'coord']);
    assert.deepEqual(r.peersOfB, ['a', 'coord']);
    checkComplete(r.reports, r.flood, 'a', 'b');
    checkComplete(r.reports, r.flood, 'b', 'a');
    for (const dead of ['primary', '1', '2']) {
      checkPrefix(r.reports, 'a', dead);
      checkPrefix(r.reports, 'b', dead);
      assert.ok(r.reports.a[dead]?.got > 0, `a got nothing from ${dead}: the test did not exercise it`);
    }
  });

  test('shm: garbage over a member\'s rings (needs /proc/<pid>/map_files): its peers close it with an error event; nothing else breaks', { skip: noShm || (process.getuid?.() !== 0 && 'writing into another process\'s mappings needs root'), timeout: 60_000 }, async () => {
    const r = await scenario('shm', 'corrupt', {}, 50_000);
    assert.ok(r.scribbled >= 4, `only ${r.scribbled} ring mappings found in the victim`);
    for (const m of ['m1', 'm2']) {
      assert.deepEqual(r.errors[m].left, ['v'], `${m} saw only the victim leave`);
      assert.ok(
        r.errors[m].errors.length > 0 && r.errors[m].errors.every((e) => e.code === 'ERR_SHMBUS_PROTOCOL' && /member v is corrupt/.test(e.message)),
        `${m}'s error events: ${JSON.stringify(r.errors[m].errors)}`,
      );
      checkPrefix(r.reports, m, 'v');
    }
    assert.deepEqual(r.peersOfM1, ['coord', 'm2']);
    assert.deepEqual(r.peersOfM2, ['coord', 'm1']);
    checkComplete(r.reports, r.flood, 'm1', 'm2');
    checkComplete(r.reports, r.flood, 'm2', 'm1');
    assert.equal(r.victimAlive, true, 'the victim process itself did not crash');
    assert.equal(r.echoAfter, 'ok');
  });

  test('shm: 100 members join, talk and die (kill -9, exit, throw, close); survivors\' fds, memfd mappings and /dev/shm come back', { skip: noShm, timeout: 150_000 }, async () => {
    const r = await scenario('shm', 'churn', { cycles: 100, width: 5, deadline: 130_000 }, 140_000);
    assert.equal(r.cycles, 100);
    assert.deepEqual(Object.keys(r.hows).sort(), ['SIGKILL', 'close', 'exit', 'throw']);
    assert.deepEqual(r.peersAfter, ['m1']);
    assert.deepEqual(r.m1Peers, ['coord']);
    assert.ok(r.before.coord.memfdMaps >= 2, 'the linked coordinator maps its rings (memfd) at all');
    assert.deepEqual(r.after.coord, r.before.coord, 'the coordinator (a member)');
    assert.deepEqual(r.after.m1, r.before.m1, 'member m1');
  });
});
