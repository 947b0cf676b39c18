// The conformance suite: every behaviour of DESIGN.md section 1, run by real programs (a cluster
// primary and its workers, a child_process.fork parent and its children) on each transport under
// test. Choose transports with SHMBUS_TEST_TRANSPORTS=process,shm,nats,hybrid; by default
// 'process', plus 'shm' where a bus opens with it, plus 'nats' and 'hybrid' (all its members on one
// host) where a NATS server answers on 127.0.0.1:4222 (always under CI: there a missing server fails).
//
// Each scenario is a program under test/fixtures/ that prints one {"result": ...} line; run one by
// hand with e.g. `SHMBUS_TRANSPORT=shm node test/fixtures/kill.mjs cluster`.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { NO_NATS, run, resultOf, transportsUnderTest } from './helpers/run.mjs';

const transports = await transportsUnderTest({ hybrid: true });
if (!process.env.SHMBUS_TEST_TRANSPORTS && !transports.includes('nats')) test('conformance on nats and hybrid', { skip: NO_NATS }, () => {});

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
      // A few of the members, not all of them.
      assert.match(r.unknownMessage, /^member 99 is not on bus "\S+" now \(its members: "primary" \(this one\), 1, 2, 3 and 1 more\); if it is starting, await bus\.waitFor\(99\) first$/);
    });

    test('a child_process.fork parent and children: ids from the id option, SHMBUS_ID, NODE_APP_INSTANCE, host and pid', async () => {
      const r = await resultOf('fork.mjs', { transport });
      // The parent has no id option, no SHMBUS_ID and no cluster: a unique name from host and pid.
      assert.match(r.id, /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/);
      assert.ok(r.id.endsWith(`-${r.pid}`), `${r.id} is made from the host name and pid ${r.pid}`);
      assert.equal(r.transport, transport);
      const everyone = [r.id, 0, 9, 10, 'cache', 'mailer'];
      const names = [r.id, 'cache', 'mailer'].sort();
      // Numbers ascending (9 before 10), then strings.
      assert.deepEqual(r.peers, [0, 9, 10, 'cache', 'mailer']);
      const others = (id) => [0, 9, 10, ...names].filter((x) => x !== id);
      assert.deepEqual(
        r.children.map(({ id, transport, peers }) => ({ id, transport, peers })),
        [0, 9, 10, 'cache', 'mailer'].map((id) => ({ id, transport, peers: others(id) })),
      );
      assert.deepEqual(r.toAll, { sent: { value: 6 }, received: onlyTo(everyone, everyone, 'hello<-mailer') });
      assert.deepEqual(r.toOne, { sent: { value: 1 }, received: onlyTo(everyone, ['cache'], 'one<-10') });
      assert.deepEqual(r.toZero, { sent: { value: 1 }, received: onlyTo(everyone, [0], 'one<-mailer') }, 'member 0');
      assert.deepEqual(r.toList, { sent: { value: 3 }, received: onlyTo(everyone, [r.id, 10, 'cache'], 'list<-cache') });
      assert.deepEqual(r.toParent, { sent: { value: 1 }, received: onlyTo(everyone, [r.id], 'one<-9') });
      assert.deepEqual(r.unknown, { sent: 'ERR_SHMBUS_UNKNOWN_PEER', received: onlyTo(everyone, [], '') });
    });

    test('a forked child that loads node:cluster joins its parent\'s bus; a forked cluster primary with no bus above it hosts its own', async () => {
      const joins = await resultOf('nested.mjs', { transport, args: ['joins'] });
      assert.equal(joins.joined, 'resolved');
      assert.deepEqual(joins.peers, ['helper']);
      assert.deepEqual(joins.answer, { value: { id: 'helper', peers: ['root'], clusterLoaded: true } });

      const hub = await resultOf('nested.mjs', { transport, args: ['hub'] });
      assert.equal(hub.id, 'primary');
      assert.equal(hub.joined, 'resolved');
      assert.deepEqual(hub.peers, [1, 2]);
      assert.deepEqual(hub.answer, { value: { id: 2, peers: [1, 'primary'] } });
    });

    test('handle() and request(): values, remote errors, no handler, unknown peer, timeouts, abort, self', async () => {
      const r = await resultOf('requests.mjs', { transport });
      assert.equal(r.secondHandler, 'ERR_SHMBUS_INVALID_ARG');
      assert.equal(r.handleReserved, 'ERR_SHMBUS_INVALID_ARG');
      for (const [who, from] of [['fromParent', 'parent'], ['fromSibling', 'b']]) {
        const q = r[who];
        const at = (what) => `${what} (asked by ${from})`;
        assert.deepEqual(q.value, { value: 42 }, at('value'));
        assert.deepEqual(q.asyncValue.value?.echo, { x: [1, 2] }, at('async value'));
        assert.equal(q.asyncValue.value.action, 'later', at('msg.action'));
        assert.equal(q.asyncValue.value.by, 'a', at('answered by'));
        if (from === 'b') assert.equal(q.asyncValue.value.from, 'b', at('msg.from'));
        assert.equal(q.undefinedValue, 'resolved', at('undefined answer'));
        assert.deepEqual(q.throws, { code: 'ERR_SHMBUS_REMOTE', message: 'disk full', remoteCode: 'ENOSPC' }, at('throws'));
        assert.deepEqual(q.rejects, { code: 'ERR_SHMBUS_REMOTE', message: 'no code here' }, at('rejects'));
        assert.equal(q.noHandler.code, 'ERR_SHMBUS_NO_HANDLER', at('no handler'));
        assert.equal(q.unknownPeer.code, 'ERR_SHMBUS_UNKNOWN_PEER', at('unknown peer'));
        assert.equal(q.timeout.code, 'ERR_SHMBUS_TIMEOUT', at('timeout'));
        assert.ok(q.timeoutAfter >= 290, at(`the 300 ms timeout fired after ${q.timeoutAfter} ms`));
        // open({ requestTimeout: 500 }) is the default of every request.
        assert.equal(q.defaultTimeout.code, 'ERR_SHMBUS_TIMEOUT', at('default timeout'));
        assert.ok(q.defaultTimeoutAfter >= 490 && q.defaultTimeoutAfter < 10_000, at(`the default timeout fired after ${q.defaultTimeoutAfter} ms`));
        assert.equal(q.aborted.code, 'ERR_SHMBUS_ABORTED', at('aborted'));
        assert.equal(q.abortedBefore.code, 'ERR_SHMBUS_ABORTED', at('aborted before'));
        assert.equal(q.noToThrew, false, at('request() without `to` does not throw'));
        assert.equal(q.noToIsPromise, true, at('request() without `to` returns a promise'));
        assert.equal(q.noTo.code, 'ERR_SHMBUS_INVALID_ARG', at('no `to`'));
        assert.equal(q.noOptions.code, 'ERR_SHMBUS_INVALID_ARG', at('no options'));
        assert.equal(q.badTo.code, 'ERR_SHMBUS_INVALID_ARG', at('bad `to`'));
        assert.equal(q.reserved.code, 'ERR_SHMBUS_INVALID_ARG', at('reserved action'));
        assert.equal(q.badTimeout.code, 'ERR_SHMBUS_INVALID_ARG', at('bad timeout'));
        assert.deepEqual(q.self, { value: 100 }, at('to self'));
        assert.deepEqual(q.selfThrows, { code: 'ERR_SHMBUS_REMOTE', message: 'disk full', remoteCode: 'ENOSPC' }, at('to self, throws'));
        assert.equal(q.selfNoHandler.code, 'ERR_SHMBUS_NO_HANDLER', at('to self, no handler'));
      }
    });

    test("codecs: v8 keeps Map, Set, Date, BigInt, typed arrays and Buffers; json; raw takes Buffers only", async () => {
      const r = await resultOf('codecs.mjs', { transport });
      const num = (value) => ({ type: 'number', value });
      const str = (value) => ({ type: 'string', value });
      const rich = {
        type: 'Object',
        fields: {
          map: { type: 'Map', entries: [[str('a'), num(1)], [num(2), { type: 'Object', fields: { b: { type: 'Array', values: [num(3)] } } }]] },
          set: { type: 'Set', values: [str('x'), num(7)] },
          date: { type: 'Date', time: Date.UTC(2020, 1, 29, 12) },
          big: { type: 'bigint', text: (2n ** 70n).toString() },
          u8: { type: 'Uint8Array', values: [1, 2, 255] },
          f64: { type: 'Float64Array', values: [0.5, -2] },
          buf: { type: 'Buffer', hex: Buffer.from('shm').toString('hex') },
          nested: { type: 'Object', fields: { list: { type: 'Array', values: [num(1), str('two'), { type: 'null' }, { type: 'boolean', value: true }] } } },
        },
      };
      const asJson = {
        type: 'Object',
        fields: {
          date: str('1970-01-01T00:00:00.000Z'),
          map: { type: 'Object', fields: {} },
          n: num(1.5),
          s: str('é'),
          list: { type: 'Array', values: [num(1), { type: 'null' }] },
        },
      };
      const of = (list, codec) => list.filter((d) => d.codec === codec).map((d) => d.what);

      assert.deepEqual(r.v8Sent, { value: 2 });
      assert.deepEqual(of(r.described, 'v8'), [rich], 'what the child received');
      assert.deepEqual(of(r.selfSeen, 'v8'), [rich], 'what the parent sent itself');
      assert.deepEqual(r.v8Echo, rich, 'what came back as an answer');
      assert.equal(r.v8Function, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.v8Symbol, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.v8RequestFunction.code, 'ERR_SHMBUS_SERIALIZE');

      assert.deepEqual(r.jsonSent, { value: 1 });
      assert.deepEqual(of(r.described, 'json'), [asJson]);
      assert.deepEqual(r.jsonEcho, asJson);
      assert.deepEqual(r.jsonUndefined, { type: 'undefined' });
      assert.equal(r.jsonBigInt, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.jsonCyclic, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.jsonRequestBigInt.code, 'ERR_SHMBUS_SERIALIZE');

      assert.deepEqual(r.rawSent, { value: 2 });
      assert.deepEqual(r.rawUint8, { value: 1 });
      assert.deepEqual(of(r.described, 'raw'), [{ type: 'Buffer', hex: '000102fe' }, { type: 'Buffer', hex: '0908' }]);
      assert.deepEqual(of(r.selfSeen, 'raw'), [{ type: 'Buffer', hex: '000102fe' }]);
      assert.deepEqual(r.rawEcho, { type: 'Buffer', hex: Buffer.from('back').toString('hex') });
      assert.equal(r.rawString, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.rawObject, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.rawArray, 'ERR_SHMBUS_SERIALIZE');
      assert.equal(r.rawRequestString.code, 'ERR_SHMBUS_SERIALIZE');
    });

    test('sendMessage() refusals send nothing to anyone; bad names and options; a duplicate id', async () => {
      const r = await resultOf('errors.mjs', { transport });
      const me = Object.keys(r.unknownInList.received).find((id) => id !== 'a');
      const none = { [me]: [], a: [] };
      assert.deepEqual(r.unknownInList, { sent: 'ERR_SHMBUS_UNKNOWN_PEER', received: none }, "['a', 'ghost']: 'a' got nothing");
      assert.deepEqual(r.unknownFromChild, { sent: 'ERR_SHMBUS_UNKNOWN_PEER', received: none });
      assert.deepEqual(r.functionToAll, { sent: 'ERR_SHMBUS_SERIALIZE', received: none }, 'a function under v8');
      assert.deepEqual(r.functionFromChild, { sent: 'ERR_SHMBUS_SERIALIZE', received: none });
      assert.deepEqual(r.tooLarge, { sent: 'ERR_SHMBUS_TOO_LARGE', received: none }, 'over maxMessageSize');
      assert.deepEqual(r.tooLargeFromChild, { sent: 'ERR_SHMBUS_TOO_LARGE', received: none });
      assert.deepEqual(r.fits, { sent: { value: 1 }, received: { [me]: [], a: [`bad<-${me}`] } }, 'under maxMessageSize');
      assert.deepEqual(r.nothingAfterAll, { sent: { value: 1 }, received: { [me]: [], a: [`one<-${me}`] } }, 'nothing refused went out late');

      for (const name of ['peer:join', 'peer:leave', 'error']) {
        assert.deepEqual(
          r.reserved[name],
          { sendMessage: 'ERR_SHMBUS_INVALID_ARG', handle: 'ERR_SHMBUS_INVALID_ARG', request: 'ERR_SHMBUS_INVALID_ARG', on: { value: 'ok' } },
          name,
        );
      }
      for (const [what, sendCode, onCode] of r.badActions) {
        assert.equal(sendCode, 'ERR_SHMBUS_INVALID_ARG', `sendMessage with ${what} as the action`);
        assert.equal(onCode, 'ERR_SHMBUS_INVALID_ARG', `on() with ${what} as the action`);
      }
      assert.deepEqual(r.longestAction, { value: 1 }, 'an action of 256 characters');
      assert.deepEqual(r.unicodeAction, { value: 1 });
      assert.equal(r.badTarget, 'ERR_SHMBUS_INVALID_ARG');

      assert.equal(Object.keys(r.badOpen).length, 16);
      for (const [what, code] of Object.entries(r.badOpen)) assert.equal(code, 'ERR_SHMBUS_INVALID_ARG', `open() with ${what}`);
      assert.equal(r.duplicateOfChild, 'ERR_SHMBUS_DUPLICATE_ID');
      assert.equal(r.duplicateOfParent, 'ERR_SHMBUS_DUPLICATE_ID');
      assert.deepEqual(r.peersAfter, ['a'], 'the refused members never joined');
      assert.deepEqual(r.refusedExitAlone, [true, true], 'a process whose open() was refused ends by itself');

      // Each message names the cause and the fix, and quotes what it repeats, cut short.
      const m = r.messages;
      // (hybrid on one host: the id's lock in the bus directory refuses it first)
      const holder = { shm: `process ${m.childPid} (node errors.mjs)`, process: `process ${m.childPid}`, nats: 'a live member on the NATS server', hybrid: `process ${m.childPid} (node errors.mjs)` }[transport];
      assert.equal(m.duplicateOfChild, `member id "a" of bus "${r.bus}" is held by ${holder}. Every member needs an id of its own: pass open({ id }) or set SHMBUS_ID, or close the other member first`);
      assert.match(m.duplicateOfParent, new RegExp(`^member id "${me}" of bus "${r.bus}" is held by .+\\. Every member needs an id of its own`));
      assert.match(m.duplicateUnderPm2, /^member id 5 of bus .* Under PM2, NODE_APP_INSTANCE counts from 0 in each app, .*id: 'jobs\.' \+ process\.env\.NODE_APP_INSTANCE.* or a bus of its own/);
      const unknown = `member "ghost" is not on bus "${r.bus}" now (its members: "${me}" (this one), "a"); if it is starting, await bus.waitFor("ghost") first`;
      assert.equal(m.unknown, unknown);
      assert.equal(m.unknownRequest, unknown);
      assert.equal(m.tooLarge, 'a message of 4.9 KiB is over maxMessageSize (4 KiB); send less at a time, or raise maxMessageSize on every member of the bus');
      assert.equal(m.longAction, `an action must be a non-empty string of at most 256 characters, got "${'y'.repeat(40)}"… (1000 characters); use a shorter name`);
    });

    for (const mode of ['cluster', 'fork']) {
      test(`kill -9 of a member during requests (${mode}): PEER_GONE at once, peer:leave, the same id rejoins and answers`, async () => {
        const r = await resultOf('kill.mjs', { transport, args: [mode] });
        const victim = mode === 'cluster' ? 3 : 'helper';
        assert.deepEqual(r.arrived, [r.me, r.witness].sort(), 'both requests were pending at the victim');
        assert.equal(r.mine.code, 'ERR_SHMBUS_PEER_GONE');
        assert.equal(r.theirs.code, 'ERR_SHMBUS_PEER_GONE', 'the request from another member');
        // Rejected when the death was seen, not at the 30 s timeout.
        assert.ok(r.mineAfter < 10_000, `PEER_GONE after ${r.mineAfter} ms`);
        assert.ok(r.theirs.after < 10_000, `PEER_GONE after ${r.theirs.after} ms`);
        assert.ok(!r.peersAfterKill.includes(victim), 'gone from peers()');
        assert.deepEqual(r.answer.value?.id, victim, 'the new member answers as the same id');
        assert.equal(r.newPid, true, 'from the new process');
        assert.deepEqual(r.witnessAnswer.value?.id, victim, 'and answers the other members too');
        for (const [id, events] of Object.entries(r.events)) {
          assert.deepEqual(events.slice(-2), [`leave ${victim}`, `join ${victim}`], `what member ${id} saw`);
        }
        assert.ok(r.peers.includes(victim));
        assert.equal(r.duplicate, 'ERR_SHMBUS_DUPLICATE_ID', `a new process opening as ${r.witness}, a live member`);
      });
    }

    test('backpressure: a stopped receiver fills its queue, the send is refused whole, drain() waits for it to resume', async () => {
      const r = await resultOf('backpressure.mjs', { transport, timeout: 60_000 });
      assert.equal(r.flood.code, 'ERR_SHMBUS_BACKPRESSURE');
      assert.ok(r.flood.accepted >= 1, 'the queue takes messages until it is full');
      assert.ok(r.flood.accepted * r.padBytes <= r.maxQueueBytes, `${r.flood.accepted} KiB messages accepted for a 64 KiB queue`);
      assert.equal(r.toAll, 'ERR_SHMBUS_BACKPRESSURE', 'to all, the full member among them');
      assert.equal(r.toList, 'ERR_SHMBUS_BACKPRESSURE', 'a list with the full member in it');
      assert.equal(r.seqToParent, 0, 'the other members got nothing: the parent');
      assert.equal(r.finish.toSelf, 0, 'the other members got nothing: the sender itself');
      assert.equal(r.drainWhileStopped, 'still waiting', 'drain() does not resolve while the receiver is stopped');
      assert.equal(r.finish.drained, 'resolved', 'drain() resolves once it resumes');
      assert.equal(r.finish.sent, r.total);
      // Every accepted message arrived once, in order; the refused ones were never sent.
      assert.deepEqual(r.sink, { count: r.total, outOfOrder: 0, from: ['pump'] });
      assert.equal(r.filled, 'ERR_SHMBUS_BACKPRESSURE');
      assert.deepEqual(r.drainedAfterDeath, { code: 'ERR_SHMBUS_BACKPRESSURE', drain: 'resolved' }, 'drain() ends when the full member dies');
      // A member's queue to itself is bounded the same way, and drained by its own loop.
      assert.equal(r.selfFlood.code, 'ERR_SHMBUS_BACKPRESSURE');
      assert.ok(r.selfFlood.accepted > 0);
      assert.equal(r.selfFlood.inOrder, true);
    });

    test('taken bytes stop counting against maxQueueBytes: acknowledged on an answer, on a message back, and by themselves', async () => {
      const r = await resultOf('acks.mjs', { transport, timeout: 90_000 });
      const MiB = 2 ** 20;
      assert.equal(r.answered, String(40 * MiB), 'the 40 MiB request was answered');
      assert.deepEqual(r.afterAnswer, { value: 1 }, 'then at once a 30 MiB message to the same member is accepted');
      assert.equal(r.took, String(40 * MiB));
      assert.deepEqual(r.afterMessage, { value: 1 }, 'a 30 MiB message accepted as soon as the message back arrived');
      assert.deepEqual(r.quiet, [
        { size: 1024, queuedAfter: 0, framesFromPeer: 0 },
        { size: 40 * MiB, queuedAfter: 0, framesFromPeer: 0 },
      ], 'with nothing coming back, the queue still empties');
      assert.equal(r.taken, 40 * MiB + 2 * 30 * MiB + 1024 + 40 * MiB, 'everything accepted arrived');
    });

    test('100,000 messages each way between a cluster worker and the primary: all arrive, in order, once', async () => {
      const r = await resultOf('flood.mjs', { transport, timeout: 90_000 });
      const clean = { count: r.count, outOfOrder: 0, duplicates: 0, firstProblem: null };
      assert.deepEqual(r.workerSeen, clean, 'what the worker received from the primary');
      assert.deepEqual(r.primarySeen, clean, 'what the primary received from the worker');
      assert.equal(r.workerSent.sent, r.count);
      assert.equal(r.primarySent.sent, r.count);
      // Senders that never yield on their own are held to maxQueueBytes (256 KiB) per target.
      assert.ok(r.workerSent.backpressured > 0 && r.primarySent.backpressured > 0, 'the senders met backpressure');
    });

    test('handlers registered right after await open() see the first message and request', async () => {
      const r = await resultOf('early.mjs', { transport });
      assert.deepEqual(r.worker1, ['welcome<-primary']);
      assert.deepEqual(r.worker2, ['welcome<-1', 'welcome<-primary'], 'messages sent on peer:join');
      assert.deepEqual(r.answers, {
        1: { value: '1 answers primary: first request' },
        2: { value: '2 answers primary: first request' },
      }, 'requests sent on peer:join find the handler, not ERR_SHMBUS_NO_HANDLER');
    });

    test('close(): pending request and waitFor() reject ERR_SHMBUS_CLOSED, close is idempotent, both processes end by themselves', async () => {
      const r = await run('close.mjs', { transport, args: ['pending'], timeout: 20_000 });
      assert.equal(r.code, 0, r.describe());
      const out = r.result;
      assert.ok(out, r.describe());
      assert.equal(out.first, 'resolved');
      assert.equal(out.second, 'resolved');
      assert.equal(out.third, 'resolved');
      assert.equal(out.pending.code, 'ERR_SHMBUS_CLOSED');
      assert.equal(out.waiting, 'ERR_SHMBUS_CLOSED');
      assert.ok(out.rejectedAfter < 10_000, 'at close, not at their 30 s timeouts');
      assert.deepEqual(out.peersAfter, [], 'a closed bus has no peers');
      assert.equal(out.sendAfter, 'ERR_SHMBUS_CLOSED');
      assert.equal(out.requestAfterThrew, false);
      assert.equal(out.requestAfter, 'ERR_SHMBUS_CLOSED');
      assert.equal(out.waitForAfter, 'ERR_SHMBUS_CLOSED');
      assert.equal(out.drainAfter, 'ERR_SHMBUS_CLOSED');
      assert.deepEqual(r.lines.filter((l) => l.note).map((l) => l.note), [{ leave: 'parent' }], 'the child saw the parent leave');
      assert.deepEqual(out.childExit, { code: 0, signal: null }, 'the child closed its bus and ended by itself');
    });

    test('a cluster primary that closes its bus once its workers are gone exits by itself', async () => {
      const r = await run('close.mjs', { transport, args: ['primary-exits'], timeout: 20_000 });
      assert.deepEqual(r.result, { exits: [{ id: 1, code: 0, signal: null }, { id: 2, code: 0, signal: null }] }, r.describe());
      assert.equal(r.code, 0, r.describe());
      assert.equal(r.signal, null);
    });

    test('a child that unref()s its bus exits by itself; an open bus keeps a process alive unless unref()d', async () => {
      const child = await run('close.mjs', { transport, args: ['unref'], timeout: 20_000 });
      assert.deepEqual(child.result, { childExit: { code: 0, signal: null }, hi: true }, child.describe());
      assert.equal(child.code, 0);

      const alive = await run('close.mjs', { transport, args: ['alive'], timeout: 20_000 });
      assert.deepEqual(alive.result, { aliveAfter300ms: true }, alive.describe());
      assert.equal(alive.code, 0);

      const unrefd = await run('close.mjs', { transport, args: ['unref-alone'], timeout: 20_000 });
      assert.equal(unrefd.code, 0, unrefd.describe());
      assert.ok(unrefd.lines.some((l) => l.note?.opened), unrefd.describe());
      assert.equal(unrefd.result, undefined, 'it ended before its unref()d 300 ms timer');
    });

    test("'error' listeners, else process warnings; bus.stats() shape and counters; a Channel fed by a listener", async () => {
      const ran = await run('events.mjs', { transport });
      assert.equal(ran.code, 0, ran.describe());
      const r = ran.result;
      // A listener that throws or rejects: ERR_SHMBUS_LISTENER naming the action and the sender, the thrown value its cause.
      const thrown = [
        ['boom', 'Error: listener failed: boom', 'listener failed: boom'],
        ['boomAsync', 'Error: listener failed: async', 'listener failed: async'],
        ['boomValue', '"a bare string"', 'a bare string'],
      ].map(([action, reason, cause]) => ({
        code: 'ERR_SHMBUS_LISTENER',
        message: `the listener for "${action}" failed on a message from member ${JSON.stringify(r.stats.id)}: ${reason}. Catch errors inside listeners; bus.on('error') hears these`,
        cause,
      }));
      // (an async listener's rejection may come after a later message's throw)
      const sorted = (list) => [...list].sort((a, b) => (a.message < b.message ? -1 : 1));
      const seen = (got) => ({ warnings: sorted(got.warnings), errors: sorted(got.errors) });
      assert.deepEqual(seen(r.withoutListener), { warnings: sorted(thrown), errors: [] }, "no 'error' listener: process.emitWarning");
      assert.deepEqual(seen(r.withListener), { warnings: sorted(thrown), errors: sorted(thrown) }, "an 'error' listener gets them, no new warning");
      // The printed warning shows where the listener threw.
      assert.match(ran.stderr, /\[ERR_SHMBUS_LISTENER\] ShmbusError: the listener for "boom" .*\nError: listener failed: boom\n\s+at .*events\.mjs/, ran.stderr);
      // A v8 member sends to a json member: not delivered, heard as an error, counted.
      assert.deepEqual(r.mixed, { errors: ['ERR_SHMBUS_SERIALIZE'], counted: 1 });

      const fields = ['drops', 'errors', 'queuedBytes', 'receivedBytes', 'receivedMessages', 'sentBytes', 'sentMessages'];
      for (const stats of [r.stats, r.childStats]) {
        assert.deepEqual(Object.keys(stats).sort(), ['codec', 'id', 'peers', 'transport']);
        assert.equal(stats.transport, transport);
        assert.equal(stats.codec, 'v8');
        assert.deepEqual(Object.keys(stats.peers).sort(), [r.stats.id, 'c'].sort(), 'every member, self included');
        for (const [id, peer] of Object.entries(stats.peers)) {
          assert.deepEqual(Object.keys(peer).sort(), [...fields, 'via'].sort(), `stats of ${id}`);
          for (const f of fields) assert.ok(Number.isSafeInteger(peer[f]) && peer[f] >= 0, `${f} of ${id}: ${peer[f]}`);
          // hybrid with every member on one host: all through the rings
          assert.equal(peer.via, id === String(stats.id) ? 'self' : transport === 'hybrid' ? 'shm' : transport, `how ${stats.id} reaches ${id}`);
        }
      }
      assert.equal(r.childStats.id, 'c');
      assert.equal(r.sentToChild.sentMessages, 4);
      assert.ok(r.sentToChild.sentBytes > 4 * 'abc'.length);
      assert.equal(r.sentToSelf.sentMessages, 2, 'messages to self count under its own id');
      assert.equal(r.selfReceived.receivedMessages, 2);
      assert.equal(r.childFromMe.receivedMessages, 5, '4 messages and the stats request');
      assert.equal(r.childFromMe.drops, 1, 'the message nobody listens for');
      assert.equal(r.childFromMe.errors, 0);
      assert.ok(r.childFromMe.receivedBytes > r.sentToChild.sentBytes, 'the 4 messages and the request');

      assert.deepEqual(r.selfCalls, [
        { n: 1, inCall: false },
        { n: 1, late: true },
        { n: 2, inCall: false },
        { n: 2, late: true },
      ], 'messages to self are delivered on a later turn, to the listeners there by then');
      assert.deepEqual(r.heardBeforeOff, [1], 'off() removes a listener');

      assert.deepEqual(r.ticks, [1, 2, 3]);
      assert.equal(r.afterTicks, 'undefined', 'pop(100) with nothing pushed');
      assert.ok(r.popWaited >= 90, `pop(100) waited ${r.popWaited} ms`);
    });

    test('NODE_DEBUG=shmbus prints debug lines', async () => {
      const r = await run('probe.mjs', { transport, env: { NODE_DEBUG: 'shmbus' } });
      assert.equal(r.result?.opened, true, r.describe());
      assert.match(r.stderr, /^SHMBUS \d+: open \S+ as \S+ on \w+/m);
      assert.match(r.stderr, new RegExp(`^SHMBUS \\d+: bus \\S+ as \\S+: transport ${transport} \\(SHMBUS_TRANSPORT=${transport}\\)$`, 'm'), 'which transport, and why');
      assert.match(r.stderr, /^SHMBUS \d+: close /m);
      const quiet = await run('probe.mjs', { transport, env: { NODE_DEBUG: '' } });
      assert.doesNotMatch(quiet.stderr, /SHMBUS \d+:/);
    });

    test('a member that closes while asked is PEER_GONE at once and may open again as the same id; 8 MiB messages arrive whole', async () => {
      const r = await resultOf('lifecycle.mjs', { transport, timeout: 60_000 });
      assert.deepEqual(r.leaving, { value: 'leaving' });
      assert.equal(r.pending.code, 'ERR_SHMBUS_PEER_GONE');
      assert.ok(r.pendingAfter < 10_000, `PEER_GONE after ${r.pendingAfter} ms, not at the 30 s timeout`);
      assert.equal(r.back, 'resolved');
      assert.equal(r.answer.value?.id, 'a');
      assert.deepEqual(r.parentEvents.slice(-2), ['leave a', 'join a']);
      assert.deepEqual(r.bEvents.slice(-2), ['leave a', 'join a']);
      assert.equal(r.sendBig.sent, 2);
      const big = { from: 'b', length: r.sendBig.length, digest: r.sendBig.digest };
      assert.deepEqual(r.bigAtA, big);
      assert.deepEqual(r.bigAtParent, big);
    });

    test('the member that forked the others dies: its pending request fails PEER_GONE at once, the orphan ends by itself', async () => {
      // The result is printed only once the orphan has ended (it holds the root's pipe until then).
      const r = await resultOf('orphan.mjs', { transport, timeout: 30_000 });
      assert.equal(r.bossSignal, 'SIGKILL');
      assert.equal(r.asker?.end.code, 'ERR_SHMBUS_PEER_GONE');
      assert.ok(r.asker.after < 10_000, `PEER_GONE after ${r.asker.after} ms, not at the 30 s timeout`);
      assert.deepEqual(r.asker.events, ['leave boss']);
      assert.deepEqual(r.asker.peers, []);
    });
  });
}

describe('Channel (no transport involved)', () => {
  test('push() then pop(), pop() then push(), FIFO order, undefined at the timeout', async () => {
    const { Channel } = await import('shmbus');
    const ch = new Channel();
    ch.push(1);
    ch.push(2);
    assert.equal(ch.length, 2);
    assert.equal(await ch.pop(), 1);
    assert.equal(await ch.pop(10), 2);
    const waiting = ch.pop(5000);
    ch.push('late');
    assert.equal(await waiting, 'late');
    assert.equal(await ch.pop(20), undefined);
    // A pop that timed out does not take a later value.
    ch.push(3);
    assert.equal(ch.length, 1);
    assert.equal(await ch.pop(0), 3);
    const two = [ch.pop(5000), ch.pop(5000)];
    ch.push('a');
    ch.push('b');
    assert.deepEqual(await Promise.all(two), ['a', 'b']);
  });

  test('pop() timeouts: none or -1 wait for ever, 0 takes only what is there, anything else rejects and takes nothing', async () => {
    const { Channel, ShmbusError } = await import('shmbus');
    const ch = new Channel();
    for (const bad of ['x', NaN, -5, -1.5, 2 ** 31, Infinity, null, '100']) {
      await assert.rejects(ch.pop(bad), (err) => err instanceof ShmbusError && err.code === 'ERR_SHMBUS_INVALID_ARG' && /-1/.test(err.message), `pop(${String(bad)})`);
    }
    // The refused pops wait for nothing: the next value stays for the next pop.
    ch.push('kept');
    assert.equal(ch.length, 1);
    assert.equal(await ch.pop(0), 'kept');
    assert.equal(await ch.pop(0), undefined, 'pop(0) on an empty channel');
    ch.push('after pop(0)');
    assert.equal(ch.length, 1, 'pop(0) left no waiter behind');
    assert.equal(await ch.pop(), 'after pop(0)');

    let settled = false;
    const forever = ch.pop(-1).then((v) => ((settled = true), v));
    const omitted = ch.pop();
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(settled, false, 'pop(-1) still waits');
    ch.push('one');
    ch.push('two');
    assert.deepEqual(await Promise.all([forever, omitted]), ['one', 'two']);

    // The largest timeout is accepted (and a value ends its wait).
    const longest = ch.pop(2 ** 31 - 1);
    ch.push('longest');
    assert.equal(await longest, 'longest');
    // A pop that timed out never takes a later value; the one behind it does.
    const early = ch.pop(10);
    const late = ch.pop(5000);
    assert.equal(await early, undefined);
    ch.push('for the later pop');
    assert.equal(await late, 'for the later pop');
    assert.equal(ch.length, 0);
  });
});
