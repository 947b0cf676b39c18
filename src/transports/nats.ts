/**
 * The NATS transport: the same bus across machines, through a NATS server (or cluster). This file
 * is the Transport: the connection and its life, sending and receiving frames, flow control over
 * them, and probes. The bytes on the wire and the subjects are nats-wire.ts's; who is a member
 * (claims, queries, heartbeats, expiry, incarnations) is nats-presence.ts's.
 *
 * Frames carry the sender's id, incarnation (epoch) and a sequence number per stream (one stream
 * per target for frames to one member, one for broadcasts), and a frame to one member the
 * acknowledgement of what the sender took from it (flow.ts keeps both sides); acknowledgements
 * with nothing to ride on go as control messages. The bytes not yet acknowledged are
 * queuedBytes(to), so the bus's maxQueueBytes rule bounds what sits in the server for a slow
 * member. A gap in the sequence (the server dropped a slow consumer, a reconnect lost what was in
 * flight) is reported as an error; delivery is at most once. The small frames written to a
 * member in one turn of the loop go as one message (a batch, batch.ts), broadcasts likewise.
 * Frames over the server's max_payload go as chunks and are joined back; a chunk stream that is
 * cut is dropped, never delivered in part. While the bus has requests pending to a member, it is
 * probed every sweep (SWEEP_MS) with a message whose reply subject gets the server's "no
 * responders" status if the member's connection is gone (kill -9), so those requests fail within
 * a fraction of a second.
 *
 * Options (the `nats` section of open(); every other key goes to the client's connect()):
 *   heartbeatInterval  500 ms   how often a member says it is alive
 *   presenceTimeout   2000 ms   silence after which a member is gone (at least 2 heartbeats; a
 *                               peer that heartbeats more slowly gets 2.5 of its own intervals)
 *   joinWindow         150 ms   how long open() collects the answers of the members present
 *   claimTimeout  max(1000, presenceTimeout) ms  how long open() waits for a subscribed holder
 *                               of its id to answer before it takes the id as held
 *   subjectPrefix   'shmbus'    the root of every subject
 * Client defaults shmbus sets (overridable): servers 'nats://127.0.0.1:4222',
 * maxReconnectAttempts -1 (forever), reconnectTimeWait 1000, pingInterval 10000, timeout 5000;
 * noEcho is always true.
 */
import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { debuglog } from 'node:util';
import { ShmbusError, duplicateId, invalidArg } from '../errors';
import { show } from '../ids';
import { BATCH_BYTES, Batcher, readBatch } from './batch';
import { BROADCAST, FlowControl, UNICAST, type Ack, type Stream } from './flow';
import { Presence, type NatsHooks, type Peer, type PresenceLink, type PresenceTuning } from './nats-presence';
import { ChunkJoiner, FrameKind, FrameWriter, Subjects, TokenIds, decodeControl, encodeControl, idToken, isControl, readFrame, type Control, type FrameAck } from './nats-wire';
import type { MemberId, Transport, TransportContext } from './transport';

const debug = debuglog('shmbus');

// The subset of @nats-io/transport-node this transport uses (loaded when the transport is made).
interface NatsMsg {
  subject: string;
  reply?: string;
  data: Uint8Array;
  headers?: { code: number };
}
interface NatsSub {
  unsubscribe(): void;
}
/** The client internals that ref()/unref() reach. */
interface ClientProtocol {
  transport?: { socket?: { ref?(): void; unref?(): void } };
  heartbeats?: { _schedule?: () => void; timer?: NodeJS.Timeout };
  dialDelay?: (Promise<void> & { timer?: NodeJS.Timeout }) | null;
}
interface NatsConnection {
  info?: { max_payload: number };
  publish(subject: string, data?: Uint8Array, options?: { reply?: string }): void;
  subscribe(subject: string, opts: { callback: (err: Error | null, msg: NatsMsg) => void }): NatsSub;
  flush(): Promise<void>;
  close(): Promise<void>;
  closed(): Promise<void | Error>;
  isClosed(): boolean;
  getServer(): string;
  status(): AsyncIterable<{ type: string; server?: string; error?: Error }>;
}

/** The batch of broadcasts, beside one per member. */
const EVERYONE = Symbol('everyone');
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/** After this long without an acknowledgement while bytes are outstanding, ask the target where it is. */
const SYNC_AFTER = 1000;

let dialDelayTimers: boolean | undefined;

/**
 * The client waits between reconnect attempts with nats-core's delay(), whose timer it keeps to
 * itself. Replaces it (once per process) with one that behaves the same and shows its timer, so
 * that an unref()d bus can unref it. Returns whether that worked.
 */
function exposeDialDelayTimers(): boolean {
  if (dialDelayTimers !== undefined) return dialDelayTimers;
  dialDelayTimers = false;
  try {
    const core = require.resolve('@nats-io/nats-core', { paths: [require.resolve('@nats-io/transport-node')] });
    const util = require(path.join(path.dirname(core), 'util.js')) as { delay?: unknown };
    if (typeof util.delay !== 'function') return false;
    util.delay = (ms = 0) => {
      let timer: NodeJS.Timeout | undefined;
      let done = (): void => undefined;
      const wait = new Promise<void>((resolve) => {
        done = resolve;
        timer = setTimeout(resolve, ms);
      });
      return Object.assign(wait, {
        timer,
        cancel: () => {
          clearTimeout(timer);
          done();
        },
      });
    };
    dialDelayTimers = true;
  } catch (err) {
    debug('nats: the client\'s reconnect wait stays as it is: %s', (err as Error).message);
  }
  return dialDelayTimers;
}

/** The options of the `nats` section that are shmbus's own; the rest go to the NATS client. */
const OWN_KEYS = ['heartbeatInterval', 'presenceTimeout', 'joinWindow', 'claimTimeout', 'subjectPrefix'];

interface NatsTuning extends PresenceTuning {
  subjectPrefix: string;
}

function msOption(value: unknown, what: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw invalidArg(`nats.${what} must be a number of ms from ${min} to ${max}, got ${show(value)}`);
  }
  return value;
}

function tuning(options: Record<string, unknown>): NatsTuning {
  const heartbeatInterval = msOption(options.heartbeatInterval, 'heartbeatInterval', 500, 20, 60_000);
  const presenceTimeout = msOption(options.presenceTimeout, 'presenceTimeout', 2000, 50, 600_000);
  if (presenceTimeout < 2 * heartbeatInterval) {
    throw invalidArg(`nats.presenceTimeout (${presenceTimeout}) must be at least twice nats.heartbeatInterval (${heartbeatInterval})`);
  }
  const joinWindow = msOption(options.joinWindow, 'joinWindow', 150, 1, 60_000);
  const claimTimeout = msOption(options.claimTimeout, 'claimTimeout', Math.max(1000, presenceTimeout), 1, 600_000);
  const subjectPrefix = options.subjectPrefix ?? 'shmbus';
  if (typeof subjectPrefix !== 'string' || !/^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$/.test(subjectPrefix) || subjectPrefix.length > 100) {
    throw invalidArg(`nats.subjectPrefix must be one or more subject tokens of letters, digits, '_' and '-' joined by '.', got ${show(subjectPrefix)}`);
  }
  return { heartbeatInterval, presenceTimeout, joinWindow, claimTimeout, subjectPrefix };
}

class NatsTransport implements Transport {
  readonly name = 'nats' as const;
  private readonly ctx: TransportContext;
  private readonly tune: NatsTuning;
  private readonly clientOptions: Record<string, unknown>;
  private readonly epoch: number;
  private readonly subjects: Subjects;
  private readonly presence: Presence;
  private readonly writer: FrameWriter;
  private readonly senderIds = new TokenIds();
  private readonly chunks = new ChunkJoiner();
  private nc?: NatsConnection;
  private subs: NatsSub[] = [];
  /** Set when open() has resolved: from then on the host hears of joins and leaves. */
  private reporting = false;
  /** What presence reported before open() resolved. */
  private readonly reportLater: Error[] = [];
  private maxPayload = DEFAULT_MAX_PAYLOAD;
  private readonly flow: FlowControl;
  private readonly batches: Batcher<MemberId | typeof EVERYONE>;
  /** Requests the bus has pending, per target: while there are any, the target is probed. */
  private readonly pendingTo = new Map<MemberId, number>();
  private held = true;
  private closing?: Promise<void>;

  constructor(ctx: TransportContext, hooks: NatsHooks) {
    this.ctx = ctx;
    const options = ctx.options ?? {};
    this.tune = tuning(options);
    this.clientOptions = {};
    for (const [key, value] of Object.entries(options)) if (!OWN_KEYS.includes(key)) this.clientOptions[key] = value;
    const token = idToken(ctx.id);
    if (Buffer.byteLength(token, 'latin1') > 255) throw invalidArg(`id ${show(ctx.id)} is too long for the nats transport`);
    this.epoch = (randomBytes(4).readUInt32LE(0) | 1) >>> 0;
    const instance = randomBytes(8).toString('hex');
    this.writer = new FrameWriter(token, this.epoch);
    this.batches = new Batcher((to, batch) => this.publishBatch(to, batch), this.writer.batchHeadroom);
    this.subjects = new Subjects(this.tune.subjectPrefix, ctx.busName, instance);
    const link: PresenceLink = {
      publish: (subject, message, reply) => this.publishControl(subject, message, reply),
      joined: (peer) => {
        if (this.reporting) ctx.host.join(peer.id);
      },
      left: (peer) => this.left(peer),
      // Heard while opening (a member refused): said once open() has resolved, when the application can listen.
      report: (err) => (this.reporting ? this.report(err) : this.reportLater.push(err)),
      sweep: (peer, now) => this.check(peer, now),
    };
    this.presence = new Presence({ id: ctx.id, busName: ctx.busName, epoch: this.epoch, instance }, this.subjects, this.tune, link, hooks);
    this.flow = new FlowControl(ctx.maxQueueBytes, (to, ack) => this.sendAck(to, ack), () => this.reporting && ctx.host.writable());
  }

  private get members(): Map<MemberId, Peer> {
    return this.presence.members;
  }

  // -------------------------------------------------------------------------------------------
  // Joining and leaving

  async open(): Promise<void> {
    const nc = await this.connect();
    if (this.presence.state === 'closed') {
      await nc.close().catch(() => undefined);
      throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the bus was closed while it was opening');
    }
    this.nc = nc;
    this.patchClientTimers();
    this.maxPayload = nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    this.watchStatus(nc);
    this.presence.state = 'joining';

    this.subs.push(nc.subscribe(`${this.subjects.inbox}.>`, { callback: this.guard((msg) => this.onInbox(msg)) }));
    await this.flush(nc);

    // 1. Claim the id: whoever holds it answers; nobody holding it, the server says so at once.
    const claim = await this.presence.claim();
    if (claim) throw duplicateId(this.ctx.id, this.ctx.busName, claim);

    // 2. Listen as this member, then ask everyone present to answer within the join window.
    const onData = this.guard((msg) => this.onData(msg));
    this.subs.push(nc.subscribe(this.subjects.member(idToken(this.ctx.id)), { callback: onData }));
    this.subs.push(nc.subscribe(this.subjects.all, { callback: onData }));
    this.subs.push(nc.subscribe(this.subjects.presence, { callback: this.guard((msg) => this.onPresence(msg)) }));
    await this.flush(nc);
    // 3. A member once the window is over: it says so, and keeps saying so.
    await this.presence.join();
    this.applyHold();
    this.reporting = true;
    if (this.reportLater.length > 0) setImmediate(() => this.reportLater.splice(0).forEach((err) => this.report(err)));
    debug('nats %s: %s joined as epoch %d with %d peers via %s', this.ctx.busName, this.ctx.id, this.epoch, this.members.size, nc.getServer());
  }

  /** A subscription callback that never throws into the NATS client's reader (that would cut the connection). */
  private guard(fn: (msg: NatsMsg) => void): (err: Error | null, msg: NatsMsg) => void {
    return (err, msg) => {
      if (err || this.presence.state === 'closed') return;
      try {
        fn(msg);
      } catch (e) {
        this.report(e instanceof Error ? e : new Error(String(e)));
      }
    };
  }

  private async connect(): Promise<NatsConnection> {
    let natsModule: { connect(options: Record<string, unknown>): Promise<NatsConnection> };
    try {
      natsModule = require('@nats-io/transport-node');
    } catch (err) {
      throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the nats transport needs the package @nats-io/transport-node: ${(err as Error).message}`, { cause: err });
    }
    const options: Record<string, unknown> = {
      // The client's own `port` option excludes `servers`.
      ...(this.clientOptions.port === undefined ? { servers: 'nats://127.0.0.1:4222' } : {}),
      name: `shmbus ${this.ctx.busName} ${String(this.ctx.id)}`,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 1000,
      pingInterval: 10_000,
      timeout: 5000,
      ...this.clientOptions,
      // Frames to self never leave the bus, and this member's own broadcasts must not come back.
      noEcho: true,
    };
    try {
      return await natsModule.connect(options);
    } catch (err) {
      const e = err as Error & { name?: string };
      const where = Array.isArray(options.servers) ? options.servers.join(', ') : options.servers !== undefined ? String(options.servers) : `port ${String(options.port)}`;
      if (e?.name === 'InvalidArgumentError') {
        throw new ShmbusError('ERR_SHMBUS_INVALID_ARG', `nats: ${e.message}`, { cause: err });
      }
      throw new ShmbusError(
        'ERR_SHMBUS_TRANSPORT',
        `can't reach the NATS server at ${where}: ${e?.message ?? e}; start one there (nats-server), or point nats.servers at one that runs`,
        { cause: err },
      );
    }
  }

  async close(): Promise<void> {
    if (this.closing) return this.closing;
    // What was sent before close() goes before the bye.
    if (this.presence.state === 'member') this.batches.flush();
    this.reporting = false;
    this.presence.leave();
    this.flow.close();
    const nc = this.nc;
    this.closing = (async () => {
      if (!nc || nc.isClosed()) return;
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([nc.flush().catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, 1000)))]);
      clearTimeout(timer);
      await nc.close().catch(() => undefined);
    })();
    return this.closing;
  }

  peers(): MemberId[] {
    return [...this.members.keys()];
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const nc = this.nc;
    if (!nc || this.presence.state !== 'member' || nc.isClosed()) {
      throw new ShmbusError('ERR_SHMBUS_TRANSPORT', 'the connection to the NATS server is closed');
    }
    try {
      this.sendOn(nc, targets, head, body);
    } catch (err) {
      if (err instanceof ShmbusError) throw err;
      throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS client refused the message: ${(err as Error)?.message ?? err}`, { cause: err });
    }
  }

  private sendOn(nc: NatsConnection, targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const size = head.length + body.length;
    const maxPayload = this.maxPayload;
    const now = Date.now();
    const members = this.members;

    // Small frames wait for the end of the turn; a large one goes at once, after them (a
    // member's frames arrive in the order it sent them, broadcasts and its own alike).
    const batched = size + 8 <= Math.min(BATCH_BYTES, maxPayload / 4);
    const broadcast = targets.length > 1 && targets.length === members.size && targets.every((id) => members.has(id));
    if (broadcast) {
      if (!batched || this.batches.targets > (this.batches.waiting(EVERYONE) ? 1 : 0)) this.batches.flush();
      const seq = this.flow.broadcast(members.keys(), size, now);
      if (batched) this.batches.add(EVERYONE, seq, head, body);
      else this.publishFrame(nc, this.subjects.all, BROADCAST, seq, head, body, maxPayload, undefined, undefined);
      return;
    }
    if (!batched || this.batches.waiting(EVERYONE)) this.batches.flush();
    for (const id of targets) {
      const peer = members.get(id);
      if (!peer) continue;
      const seq = this.flow.sendTo(id, size, now);
      if (batched) {
        this.batches.add(id, seq, head, body);
        continue;
      }
      this.publishFrame(nc, peer.subject, UNICAST, seq, head, body, maxPayload, this.probeReply(peer), this.ackFor(peer));
    }
  }

  /** One batch to `to` (or to everyone), with the acknowledgement owed to it. */
  private publishBatch(to: MemberId | typeof EVERYONE, batch: Buffer): void {
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    const peer = to === EVERYONE ? undefined : this.members.get(to);
    if (to !== EVERYONE && !peer) return;
    const message = this.writer.batch(peer ? UNICAST : BROADCAST, batch, peer && this.ackFor(peer));
    const reply = peer && this.probeReply(peer);
    try {
      nc.publish(peer ? peer.subject : this.subjects.all, message, reply ? { reply } : undefined);
    } catch (err) {
      this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS client refused a batch of messages: ${(err as Error)?.message ?? err}`, { cause: err }));
    }
  }

  /** Publishes one frame, whole or in chunks under max_payload. */
  private publishFrame(nc: NatsConnection, subject: string, stream: Stream, seq: number, head: Uint8Array, body: Uint8Array, maxPayload: number, reply: string | undefined, ack: FrameAck | undefined): void {
    const options = reply ? { reply } : undefined;
    try {
      this.writer.frame(stream, seq, head, body, maxPayload, ack, (message, first) => nc.publish(subject, message, first ? options : undefined));
    } catch (err) {
      if (err instanceof RangeError) throw new ShmbusError('ERR_SHMBUS_TRANSPORT', err.message);
      throw err;
    }
  }

  /** The acknowledgement owed to `peer`, to ride on a frame to it alone. */
  private ackFor(peer: Peer): FrameAck | undefined {
    const ack = this.flow.piggyback(peer.id);
    return ack && { epoch: peer.epoch, ...ack };
  }

  /**
   * To a member with requests pending, a frame carries a reply subject: if the member's
   * connection is gone, the server's "no responders" status comes back at once.
   */
  private probeReply(peer: Peer): string | undefined {
    return this.pendingTo.has(peer.id) ? this.subjects.noResponders(peer.token, peer.epoch) : undefined;
  }

  pendingRequests(to: MemberId, count: number): void {
    if (count > 0) this.pendingTo.set(to, count);
    else this.pendingTo.delete(to);
  }

  private sendAck(to: MemberId, ack: Ack): void {
    const peer = this.members.get(to);
    if (peer && this.presence.state === 'member') this.publishControl(peer.subject, { kind: 'ack', targetEpoch: peer.epoch, unicast: ack.u, broadcast: ack.b });
  }

  private publishControl(subject: string, message: Control, reply?: string): void {
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    try {
      nc.publish(subject, encodeControl(message, this.presence.sender), reply ? { reply } : undefined);
    } catch (err) {
      debug('nats: publish on %s failed: %s', subject, (err as Error).message);
    }
  }

  queuedBytes(to: MemberId): number {
    return this.members.has(to) ? this.flow.queuedBytes(to) : 0;
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  private onPresence(msg: NatsMsg): void {
    const received = decodeControl(msg.data);
    if (received) this.presence.onPresence(received);
  }

  private onInbox(msg: NatsMsg): void {
    if (msg.data.length === 0 && msg.headers?.code === 503) return this.presence.onNoResponders(msg.subject);
    const received = decodeControl(msg.data);
    if (received) this.presence.onInbox(msg.subject, received);
  }

  private onData(msg: NatsMsg): void {
    const d = msg.data;
    if (d.length === 0) return;
    if (isControl(d)) return this.onMemberControl(msg);
    const frame = readFrame(d);
    if (!frame) return;
    const id = this.senderIds.get(frame.from);
    if (id === undefined) return;
    const peer = this.presence.seen(id, frame.epoch);
    if (!peer) return;
    // What the sender took from this member counts before its frame is handed on.
    if (frame.ack && frame.ack.epoch === this.epoch) this.flow.acked(id, frame.ack);

    const { kind, stream, seq } = frame;
    if (kind === FrameKind.MORE || kind === FrameKind.LAST) {
      const joined = this.chunks.add(id, frame);
      if (joined === 'wrong length') this.report(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(id)} sent a chunked frame of the wrong length`));
      else if (typeof joined !== 'string') this.take(peer, stream, seq, joined);
      return;
    }

    // WHOLE, BATCH or FIRST: a new frame in this stream.
    if (this.chunks.drop(id)) this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `a large message from member ${show(id)} was cut off and dropped`));
    if (kind === FrameKind.WHOLE) return this.take(peer, stream, seq, frame.payload);
    if (kind === FrameKind.BATCH) {
      if (!readBatch(frame.payload, (s, one) => this.take(peer, stream, s, one))) {
        this.report(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(id)} sent a batch of messages that can't be read; the rest of it is dropped`));
      }
      return;
    }
    if (frame.total > this.ctx.maxMessageSize) {
      this.report(new ShmbusError('ERR_SHMBUS_TOO_LARGE', `member ${show(id)} sent a message of ${frame.total} bytes, over this member's maxMessageSize (${this.ctx.maxMessageSize}); dropped`));
      // Taken (as nothing), so that its chunks are ignored and the sender's queue empties.
      this.reportLost(id, this.flow.took(id, stream, seq, 0));
      return;
    }
    this.chunks.begin(id, frame);
  }

  /** A whole frame from `peer`: taken (so that what is sent in answer acknowledges it), then handed to the bus. */
  private take(peer: Peer, stream: Stream, seq: number, frame: Buffer): void {
    this.reportLost(peer.id, this.flow.took(peer.id, stream, seq, frame.length));
    this.ctx.host.frame(peer.id, frame);
  }

  private reportLost(id: MemberId, lost: number): void {
    if (lost > 0) this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `${lost} message(s) from member ${show(id)} were lost (a slow consumer dropped by the NATS server, or a reconnect)`));
  }

  /** Control messages on this member's own subject: claims, acknowledgements, syncs. */
  private onMemberControl(msg: NatsMsg): void {
    const received = decodeControl(msg.data);
    if (!received) return;
    const { message, sender } = received;
    switch (message.kind) {
      case 'claim':
        return this.presence.onClaim(sender, msg.reply);
      case 'ack': {
        // Only from a known member: a process still joining acknowledges broadcasts too.
        const peer = this.members.get(sender.id);
        if (message.targetEpoch !== this.epoch || !peer || peer.epoch !== sender.epoch) return;
        peer.lastSeen = Date.now();
        this.flow.acked(sender.id, { u: message.unicast, b: message.broadcast });
        return;
      }
      case 'sync': {
        // The sender has sent up to these: whatever of that has not arrived by now never will.
        const peer = this.presence.seen(sender.id, sender.epoch);
        if (!peer) return;
        let lost = this.flow.sentThere(sender.id, { u: message.unicast, b: message.broadcast });
        if (this.chunks.drop(sender.id)) lost++;
        this.reportLost(sender.id, lost);
        return;
      }
    }
  }

  /** `peer` left or died: nothing waits for it or counts against it any more. */
  private left(peer: Peer): void {
    this.batches.drop(peer.id);
    const queued = this.flow.queuedBytes(peer.id);
    this.flow.forget(peer.id);
    if (this.chunks.drop(peer.id)) debug('nats %s: dropped a partial frame from %s', this.ctx.busName, peer.id);
    if (this.reporting) {
      this.ctx.host.leave(peer.id);
      if (queued > 0) this.ctx.host.writable();
    }
  }

  /** On each sweep: probe members with requests pending, and sync those whose queue stalled. */
  private check(peer: Peer, now: number): void {
    const stalled = this.flow.stalled(peer.id, SYNC_AFTER, now);
    if (this.pendingTo.has(peer.id) || stalled) {
      const { u, b } = this.flow.sentUpTo(peer.id);
      this.publishControl(peer.subject, { kind: 'sync', unicast: u, broadcast: b }, this.subjects.noResponders(peer.token, peer.epoch));
    }
  }

  // -------------------------------------------------------------------------------------------
  // The connection's life

  private watchStatus(nc: NatsConnection): void {
    (async () => {
      for await (const s of nc.status()) {
        if (this.presence.state === 'closed') return;
        switch (s.type) {
          case 'disconnect':
            debug('nats %s: disconnected from %s', this.ctx.busName, s.server);
            this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `lost the connection to the NATS server ${s.server ?? ''}; reconnecting (messages in flight may be lost)`));
            break;
          case 'reconnect':
            debug('nats %s: reconnected to %s', this.ctx.busName, s.server);
            this.maxPayload = nc.info?.max_payload ?? this.maxPayload;
            this.applyHold();
            this.presence.reconnected();
            break;
          case 'error':
            this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS server reported: ${s.error?.message ?? 'an error'}`, { cause: s.error }));
            break;
        }
      }
    })().catch((err) => debug('nats: status watch ended: %s', (err as Error).message));
    nc.closed().then((err) => {
      if (this.presence.state === 'closed') return;
      this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `the connection to the NATS server closed${err ? `: ${err.message}` : ''}; this member is alone on the bus now`, { cause: err }));
      this.presence.connectionClosed();
    });
  }

  private flush(nc: NatsConnection): Promise<void> {
    return nc.flush().catch((err) => {
      throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS server did not answer: ${(err as Error).message}`, { cause: err });
    });
  }

  private report(err: Error): void {
    if (this.reporting) this.ctx.host.error(err);
    else debug('nats: %s', err.message);
  }

  // -------------------------------------------------------------------------------------------
  // Keeping the loop alive

  ref(): void {
    this.held = true;
    this.applyHold();
  }

  unref(): void {
    this.held = false;
    this.applyHold();
  }

  private get protocol(): ClientProtocol | undefined {
    return (this.nc as unknown as { protocol?: ClientProtocol })?.protocol;
  }

  /**
   * The presence timers, the client's socket, its ping timer and its wait between reconnect
   * attempts (client internals, reached with care) follow ref()/unref().
   */
  private applyHold(): void {
    const method = this.held ? 'ref' : 'unref';
    this.presence.hold(this.held);
    const protocol = this.protocol;
    protocol?.transport?.socket?.[method]?.();
    protocol?.heartbeats?.timer?.[method]?.();
    protocol?.dialDelay?.timer?.[method]?.();
  }

  /**
   * The client re-arms its ping timer after every ping, and makes a new wait after every failed
   * reconnect attempt (so that a lost server would hold the process for ever): keep the new ones
   * unref'd while unref'd.
   */
  private patchClientTimers(): void {
    const protocol = this.protocol;
    const heartbeats = protocol?.heartbeats;
    if (heartbeats && typeof heartbeats._schedule === 'function') {
      const schedule = heartbeats._schedule;
      heartbeats._schedule = () => {
        schedule.call(heartbeats);
        if (!this.held) heartbeats.timer?.unref?.();
      };
    }
    if (protocol && 'dialDelay' in protocol && exposeDialDelayTimers()) {
      let dialDelay = protocol.dialDelay;
      Object.defineProperty(protocol, 'dialDelay', {
        configurable: true,
        get: () => dialDelay,
        set: (wait: ClientProtocol['dialDelay']) => {
          dialDelay = wait;
          if (!this.held) wait?.timer?.unref?.();
        },
      });
    }
  }
}

export type { NatsHooks };

/** `hooks`: what a transport built on this one (hybrid) adds to presence. */
export function createNatsTransport(ctx: TransportContext, hooks: NatsHooks = {}): Transport {
  return new NatsTransport(ctx, hooks);
}
