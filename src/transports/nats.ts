/**
 * The NATS transport: the same bus across machines, through a NATS server (or cluster).
 *
 * Subjects, under `<prefix>.<bus>` (prefix option `subjectPrefix`, default 'shmbus'; the bus name
 * and member ids are escaped into single subject tokens):
 *
 *   .p              presence: query / hello / hb (heartbeat) / bye, JSON
 *   .a              frames to every member (one publish for a broadcast)
 *   .m.<member>     frames to one member, and control messages to it (claim, ack, sync)
 *   .x.<instance>.> this connection's own inbox: answers to its queries and claims, and the
 *                   server's "no responders" statuses for what it sent to a member that is gone
 *
 * Membership: a member claims its id (a request on its member subject: the server answers "no
 * responders" at once when nobody holds it), subscribes, asks everyone present to answer (a
 * query with a short collection window, `joinWindow`), then says hello. Members heartbeat every
 * `heartbeatInterval` ms; a member not heard from for `presenceTimeout` ms is gone; close() says
 * bye. While the bus has requests pending to a member it is probed every PROBE ms with a message whose
 * reply subject gets the server's "no responders" status if the member's connection is gone
 * (kill -9), so those requests fail within a fraction of a second.
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
 * cut is dropped, never delivered in part.
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
import { isMemberId, show } from '../ids';
import { BATCH_BYTES, Batcher, readBatch } from './batch';
import { BROADCAST, FlowControl, UNICAST, isU32, type Ack, type Stream } from './flow';
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

/** Wire kinds: the first byte of every message on .a and .m subjects. JSON control starts with '{'. */
const WHOLE = 1;
const FIRST = 2;
const MORE = 3;
const LAST = 4;
/** Frames small enough to go together: a batch (batch.ts) of the frames written in one turn. */
const BATCH = 5;
/** The batch of broadcasts, beside one per member. */
const EVERYONE = Symbol('everyone');
const JSON_START = 0x7b;
/**
 * kind u8, stream u8, fromLen u8, flags u8, epoch u32, seq u32; then FIRST adds total u32; then
 * with ACK_U or ACK_B in flags an acknowledgement: the target's epoch u32, u u32, b u32; then
 * the sender's id token.
 */
const FIXED = 12;
const ACK_U = 1;
const ACK_B = 2;
const ACK_BLOCK = 12;
const DEFAULT_MAX_PAYLOAD = 1024 * 1024;
/** Room left in every message under max_payload. */
const PAYLOAD_MARGIN = 64;
/** How often pending requests' targets are probed, and expiry is checked, in ms. */
const PROBE = 250;
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

interface NatsTuning {
  heartbeatInterval: number;
  presenceTimeout: number;
  joinWindow: number;
  claimTimeout: number;
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

/** A name as one subject token: anything but letters, digits and '-' becomes _XX (hex). */
function escapeToken(text: string): string {
  return text.replace(/[^A-Za-z0-9-]/g, (c) => `_${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** A member id as one subject token, also used as the sender field of frames: n<digits> or s<escaped>. */
function idToken(id: MemberId): string {
  return typeof id === 'number' ? `n${id}` : `s${escapeToken(id)}`;
}

function tokenId(token: string): MemberId | undefined {
  let id: MemberId;
  if (token.startsWith('n') && /^n\d{1,10}$/.test(token)) id = Number(token.slice(1));
  else if (token.startsWith('s')) id = token.slice(1).replace(/_([0-9a-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  else return undefined;
  return isMemberId(id) && idToken(id) === token ? id : undefined;
}

interface Partial {
  stream: number;
  seq: number;
  buf: Buffer;
  filled: number;
}

interface Peer {
  id: MemberId;
  token: string;
  epoch: number;
  lastSeen: number;
  /** The peer's own heartbeat interval (it may differ from this member's): expiry allows for it. */
  interval: number;
  /** A chunked frame from the peer, being joined. */
  partial?: Partial;
}

interface Control {
  t?: unknown;
  id?: unknown;
  e?: unknown;
  i?: unknown;
  r?: unknown;
  s?: unknown;
  m?: unknown;
  te?: unknown;
  h?: unknown;
  u?: unknown;
  b?: unknown;
}

type State = 'new' | 'joining' | 'member' | 'closed';

const TE = new TextEncoder();

function controlBytes(value: object): Uint8Array {
  return TE.encode(JSON.stringify(value));
}

class NatsTransport implements Transport {
  readonly name = 'nats' as const;
  private readonly ctx: TransportContext;
  private readonly tune: NatsTuning;
  private readonly clientOptions: Record<string, unknown>;
  private readonly myToken: string;
  private readonly myTokenBytes: Buffer;
  private readonly epoch: number;
  private readonly inst: string;
  private readonly subjects: { presence: string; all: string; inbox: string; member: (token: string) => string };
  private nc?: NatsConnection;
  private subs: NatsSub[] = [];
  private state: State = 'new';
  /** Set when open() has resolved: from then on the host hears of joins and leaves. */
  private reporting = false;
  private readonly members = new Map<MemberId, Peer>();
  /** Incarnations that are over (said bye, or replaced by a newer one): ignored if heard again. */
  private readonly deadEpochs = new Map<MemberId, number>();
  private readonly tokenCache = new Map<string, MemberId | undefined>();
  private maxPayload = DEFAULT_MAX_PAYLOAD;
  private readonly flow: FlowControl;
  private readonly batches = new Batcher<MemberId | typeof EVERYONE>((to, batch) => this.publishBatch(to, batch));
  /** Requests the bus has pending, per target: while there are any, the target is probed. */
  private readonly pendingTo = new Map<MemberId, number>();
  private held = true;
  private hbTimer?: NodeJS.Timeout;
  private sweepTimer?: NodeJS.Timeout;
  private lastSweep = 0;
  private closing?: Promise<void>;
  private lostClaim?: string;
  private claimAnswer?: (answer: { t: string; i?: string; e?: number } | 'none') => void;
  private duplicateReported = false;
  /** When this member's connection last came back: for a while after, other members are still reconnecting. */
  private reconnectedAt = 0;

  constructor(ctx: TransportContext) {
    this.ctx = ctx;
    const options = ctx.options ?? {};
    this.tune = tuning(options);
    this.clientOptions = {};
    for (const [key, value] of Object.entries(options)) if (!OWN_KEYS.includes(key)) this.clientOptions[key] = value;
    this.myToken = idToken(ctx.id);
    this.myTokenBytes = Buffer.from(this.myToken, 'latin1');
    if (this.myTokenBytes.length > 255) throw invalidArg(`id ${show(ctx.id)} is too long for the nats transport`);
    this.epoch = (randomBytes(4).readUInt32LE(0) | 1) >>> 0;
    this.inst = randomBytes(8).toString('hex');
    const root = `${this.tune.subjectPrefix}.${escapeToken(ctx.busName)}`;
    this.subjects = {
      presence: `${root}.p`,
      all: `${root}.a`,
      inbox: `${root}.x.${this.inst}`,
      member: (token) => `${root}.m.${token}`,
    };
    this.flow = new FlowControl(ctx.maxQueueBytes, (to, ack) => this.sendAck(to, ack), () => this.reporting && ctx.host.writable());
  }

  // -------------------------------------------------------------------------------------------
  // Joining and leaving

  async open(): Promise<void> {
    const nc = await this.connect();
    if (this.state === 'closed') {
      await nc.close().catch(() => undefined);
      throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the bus was closed while it was opening');
    }
    this.nc = nc;
    this.patchClientTimers();
    this.maxPayload = nc.info?.max_payload ?? DEFAULT_MAX_PAYLOAD;
    this.watchStatus(nc);
    this.state = 'joining';

    this.subs.push(nc.subscribe(`${this.subjects.inbox}.>`, { callback: this.guard((msg) => this.onInbox(msg)) }));
    await this.flush(nc);

    // 1. Claim the id: whoever holds it answers; nobody holding it, the server says so at once.
    const claim = await this.claim();
    if (claim) throw duplicateId(this.ctx.id, this.ctx.busName, claim);

    // 2. Listen as this member, then ask everyone present to answer within the join window.
    const onData = this.guard((msg) => this.onData(msg));
    this.subs.push(nc.subscribe(this.subjects.member(this.myToken), { callback: onData }));
    this.subs.push(nc.subscribe(this.subjects.all, { callback: onData }));
    this.subs.push(nc.subscribe(this.subjects.presence, { callback: this.guard((msg) => this.onPresence(msg)) }));
    await this.flush(nc);
    this.publishControl(this.subjects.presence, { t: 'query', r: `${this.subjects.inbox}.h` });
    await new Promise((resolve) => setTimeout(resolve, this.tune.joinWindow));
    if (this.lostClaim !== undefined) throw duplicateId(this.ctx.id, this.ctx.busName, this.lostClaim);
    if (this.state !== 'joining') throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the bus was closed while it was opening');

    // 3. A member now: say so, and keep saying so.
    this.state = 'member';
    this.publishControl(this.subjects.presence, { t: 'hello' });
    this.hbTimer = setInterval(() => this.heartbeat(), this.tune.heartbeatInterval);
    this.lastSweep = Date.now();
    this.sweepTimer = setInterval(() => this.sweep(), Math.min(PROBE, this.tune.heartbeatInterval / 2));
    this.applyHold();
    this.reporting = true;
    debug('nats %s: %s joined as epoch %d with %d peers via %s', this.ctx.busName, this.ctx.id, this.epoch, this.members.size, nc.getServer());
  }

  /** A subscription callback that never throws into the NATS client's reader (that would cut the connection). */
  private guard(fn: (msg: NatsMsg) => void): (err: Error | null, msg: NatsMsg) => void {
    return (err, msg) => {
      if (err || this.state === 'closed') return;
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

  /** Resolves undefined when the id is free (or this member won a tie), else who holds it. */
  private async claim(): Promise<string | undefined> {
    const answer = await new Promise<{ t: string; i?: string; e?: number } | 'none' | 'timeout'>((resolve) => {
      const timer = setTimeout(() => resolve('timeout'), this.tune.claimTimeout);
      this.claimAnswer = (a) => {
        clearTimeout(timer);
        this.claimAnswer = undefined;
        resolve(a);
      };
      this.publishControl(this.subjects.member(this.myToken), { t: 'claim', r: `${this.subjects.inbox}.c` }, `${this.subjects.inbox}.c`);
    });
    if (this.lostClaim !== undefined) return this.lostClaim;
    if (answer === 'none') return undefined;
    if (answer === 'timeout') return `a process connected to the NATS server (subscribed under this id, silent for ${this.tune.claimTimeout} ms)`;
    if (answer.t === 'taken') return 'a live member on the NATS server';
    if (answer.t === 'joining' && typeof answer.i === 'string' && answer.i < this.inst) return 'another process that is opening it now';
    return undefined;
  }

  private heartbeat(): void {
    if (this.state !== 'member') return;
    this.publishControl(this.subjects.presence, { t: 'hb' });
  }

  async close(): Promise<void> {
    if (this.closing) return this.closing;
    const wasMember = this.state === 'member';
    // What was sent before close() goes before the bye.
    if (wasMember) this.batches.flush();
    this.state = 'closed';
    this.reporting = false;
    this.claimAnswer?.('none');
    clearInterval(this.hbTimer);
    clearInterval(this.sweepTimer);
    this.flow.close();
    const nc = this.nc;
    this.closing = (async () => {
      if (!nc || nc.isClosed()) return;
      if (wasMember) this.publishControl(this.subjects.presence, { t: 'bye' }, undefined, nc);
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([nc.flush().catch(() => undefined), new Promise((resolve) => (timer = setTimeout(resolve, 1000)))]);
      clearTimeout(timer);
      await nc.close().catch(() => undefined);
    })();
    this.members.clear();
    return this.closing;
  }

  peers(): MemberId[] {
    return [...this.members.keys()];
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const nc = this.nc;
    if (!nc || this.state !== 'member' || nc.isClosed()) {
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
    const maxPayload = nc.info?.max_payload ?? this.maxPayload;
    const now = Date.now();

    // Small frames wait for the end of the turn; a large one goes at once, after them (a
    // member's frames arrive in the order it sent them, broadcasts and its own alike).
    const batched = size + 8 <= Math.min(BATCH_BYTES, maxPayload / 4);
    const broadcast = targets.length > 1 && targets.length === this.members.size && targets.every((id) => this.members.has(id));
    if (broadcast) {
      if (!batched || this.batches.targets > (this.batches.waiting(EVERYONE) ? 1 : 0)) this.batches.flush();
      const seq = this.flow.broadcast(this.members.keys(), size, now);
      if (batched) this.batches.add(EVERYONE, seq, head, body);
      else this.publishFrame(nc, this.subjects.all, BROADCAST, seq, head, body, maxPayload, undefined, undefined);
      return;
    }
    if (!batched || this.batches.waiting(EVERYONE)) this.batches.flush();
    for (const id of targets) {
      const peer = this.members.get(id);
      if (!peer) continue;
      const seq = this.flow.sendTo(id, size, now);
      if (batched) {
        this.batches.add(id, seq, head, body);
        continue;
      }
      // To a member with requests pending, a frame carries a reply subject: if the member's
      // connection is gone, the server's "no responders" status comes back at once.
      const reply = this.pendingTo.has(id) ? this.noResponderSubject(peer) : undefined;
      const ack = this.flow.piggyback(id);
      this.publishFrame(nc, this.subjects.member(peer.token), UNICAST, seq, head, body, maxPayload, reply, ack && { epoch: peer.epoch, ...ack });
    }
  }

  /** One batch to `to` (or to everyone), with the acknowledgement owed to it. */
  private publishBatch(to: MemberId | typeof EVERYONE, batch: Buffer): void {
    const nc = this.nc;
    if (!nc || nc.isClosed()) return;
    const peer = to === EVERYONE ? undefined : this.members.get(to);
    if (to !== EVERYONE && !peer) return;
    const ack = peer && this.flow.piggyback(peer.id);
    const ackLen = ack ? ACK_BLOCK : 0;
    const from = this.myTokenBytes;
    const buf = Buffer.allocUnsafe(FIXED + ackLen + from.length + batch.length);
    this.writeFixed(buf, BATCH, peer ? UNICAST : BROADCAST, 0, FIXED, ack && { epoch: peer!.epoch, ...ack });
    from.copy(buf, FIXED + ackLen);
    buf.set(batch, FIXED + ackLen + from.length);
    const reply = peer && this.pendingTo.has(peer.id) ? this.noResponderSubject(peer) : undefined;
    try {
      nc.publish(peer ? this.subjects.member(peer.token) : this.subjects.all, buf, reply ? { reply } : undefined);
    } catch (err) {
      this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS client refused a batch of messages: ${(err as Error)?.message ?? err}`, { cause: err }));
    }
  }

  pendingRequests(to: MemberId, count: number): void {
    if (count > 0) this.pendingTo.set(to, count);
    else this.pendingTo.delete(to);
  }

  private noResponderSubject(peer: Peer): string {
    return `${this.subjects.inbox}.n.${peer.token}.${peer.epoch}`;
  }

  /**
   * Publishes one frame, whole or in chunks under max_payload; `ack` (to the target's epoch) rides
   * on the first.
   */
  private publishFrame(nc: NatsConnection, subject: string, stream: Stream, seq: number, head: Uint8Array, body: Uint8Array, maxPayload: number, reply: string | undefined, ack: (Ack & { epoch: number }) | undefined): void {
    const from = this.myTokenBytes;
    const size = head.length + body.length;
    const ackLen = ack ? ACK_BLOCK : 0;
    const wholeLen = FIXED + ackLen + from.length + size;
    const options = reply ? { reply } : undefined;
    if (wholeLen <= maxPayload - PAYLOAD_MARGIN) {
      const buf = Buffer.allocUnsafe(wholeLen);
      this.writeFixed(buf, WHOLE, stream, seq, FIXED, ack);
      let at = FIXED + ackLen + from.copy(buf, FIXED + ackLen);
      buf.set(head, at);
      at += head.length;
      buf.set(body, at);
      nc.publish(subject, buf, options);
      return;
    }
    const room = maxPayload - PAYLOAD_MARGIN - (FIXED + 4 + ACK_BLOCK + from.length);
    if (room < 1024) throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS server's max_payload (${maxPayload}) is too small`);
    // Chunk i covers bytes [i*room, (i+1)*room) of head+body, without joining them first.
    let offset = 0;
    let first = true;
    while (offset < size) {
      const n = Math.min(room, size - offset);
      const last = offset + n === size;
      const kind = first ? FIRST : last ? LAST : MORE;
      const hdr = FIXED + (first ? 4 + ackLen : 0) + from.length;
      const buf = Buffer.allocUnsafe(hdr + n);
      this.writeFixed(buf, kind, stream, seq, FIXED + 4, first ? ack : undefined);
      if (first) buf.writeUInt32LE(size, FIXED);
      from.copy(buf, hdr - from.length);
      let at = hdr;
      let src = offset;
      const end = offset + n;
      if (src < head.length) {
        const take = Math.min(head.length, end) - src;
        buf.set(head.subarray(src, src + take), at);
        at += take;
        src += take;
      }
      if (src < end) buf.set(body.subarray(src - head.length, end - head.length), at);
      nc.publish(subject, buf, first ? options : undefined);
      offset = end;
      first = false;
    }
  }

  /** The fixed part, and at `ackAt` the acknowledgement if there is one. */
  private writeFixed(buf: Buffer, kind: number, stream: Stream, seq: number, ackAt: number, ack: (Ack & { epoch: number }) | undefined): void {
    buf[0] = kind;
    buf[1] = stream;
    buf[2] = this.myTokenBytes.length;
    buf[3] = ack ? (ack.u !== undefined ? ACK_U : 0) | (ack.b !== undefined ? ACK_B : 0) : 0;
    buf.writeUInt32LE(this.epoch, 4);
    buf.writeUInt32LE(seq, 8);
    if (!ack) return;
    buf.writeUInt32LE(ack.epoch, ackAt);
    buf.writeUInt32LE(ack.u ?? 0, ackAt + 4);
    buf.writeUInt32LE(ack.b ?? 0, ackAt + 8);
  }

  private sendAck(to: MemberId, ack: Ack): void {
    const peer = this.members.get(to);
    if (peer && this.state === 'member') this.publishControl(this.subjects.member(peer.token), { t: 'ack', te: peer.epoch, u: ack.u, b: ack.b });
  }

  private publishControl(subject: string, fields: object, reply?: string, nc = this.nc): void {
    if (!nc || nc.isClosed()) return;
    try {
      nc.publish(subject, controlBytes({ ...fields, id: this.ctx.id, e: this.epoch, i: this.inst, h: this.tune.heartbeatInterval }), reply ? { reply } : undefined);
    } catch (err) {
      debug('nats: publish on %s failed: %s', subject, (err as Error).message);
    }
  }

  queuedBytes(to: MemberId): number {
    return this.members.has(to) ? this.flow.queuedBytes(to) : 0;
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
   * The client's socket, its ping timer and its wait between reconnect attempts (client
   * internals, reached with care) follow ref()/unref().
   */
  private applyHold(): void {
    const method = this.held ? 'ref' : 'unref';
    this.hbTimer?.[method]();
    this.sweepTimer?.[method]();
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

  // -------------------------------------------------------------------------------------------
  // The connection's life

  private watchStatus(nc: NatsConnection): void {
    (async () => {
      for await (const s of nc.status()) {
        if (this.state === 'closed') return;
        switch (s.type) {
          case 'disconnect':
            debug('nats %s: disconnected from %s', this.ctx.busName, s.server);
            this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `lost the connection to the NATS server ${s.server ?? ''}; reconnecting (messages in flight may be lost)`));
            break;
          case 'reconnect':
            debug('nats %s: reconnected to %s', this.ctx.busName, s.server);
            this.reconnectedAt = Date.now();
            this.maxPayload = nc.info?.max_payload ?? this.maxPayload;
            this.applyHold();
            if (this.state === 'member') {
              // Tell everyone this member is here, and hear from everyone who is.
              this.publishControl(this.subjects.presence, { t: 'query', m: 1, r: `${this.subjects.inbox}.h` });
              this.heartbeat();
            }
            break;
          case 'error':
            this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `the NATS server reported: ${s.error?.message ?? 'an error'}`, { cause: s.error }));
            break;
        }
      }
    })().catch((err) => debug('nats: status watch ended: %s', (err as Error).message));
    nc.closed().then((err) => {
      if (this.state === 'closed') return;
      this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `the connection to the NATS server closed${err ? `: ${err.message}` : ''}; this member is alone on the bus now`, { cause: err }));
      for (const id of [...this.members.keys()]) this.remove(id, 'connection closed');
      clearInterval(this.hbTimer);
      clearInterval(this.sweepTimer);
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
  // Membership

  /** A sign of life from `id` in incarnation `epoch`: returns its record (new or renewed), or undefined to ignore. */
  private seen(id: MemberId, epoch: number): Peer | undefined {
    if (id === this.ctx.id) {
      if (epoch !== this.epoch) this.duplicateSeen();
      return undefined;
    }
    if (this.deadEpochs.get(id) === epoch) return undefined;
    let peer = this.members.get(id);
    if (peer && peer.epoch !== epoch) {
      // A new incarnation of the id: the old one is over.
      this.deadEpochs.set(id, peer.epoch);
      this.remove(id, 'replaced by a new incarnation');
      peer = undefined;
    }
    const now = Date.now();
    if (peer) {
      peer.lastSeen = now;
      return peer;
    }
    peer = {
      id,
      token: idToken(id),
      epoch,
      lastSeen: now,
      interval: 0,
    };
    this.members.set(id, peer);
    debug('nats %s: %s joined (epoch %d)', this.ctx.busName, id, epoch);
    if (this.reporting) this.ctx.host.join(id);
    return peer;
  }

  /** seen() for a presence message, which also tells the sender's heartbeat interval. */
  private seenWith(c: Control, id: MemberId, epoch: number): void {
    const peer = this.seen(id, epoch);
    if (peer && typeof c.h === 'number' && c.h > 0 && c.h <= 600_000) peer.interval = c.h;
  }

  private remove(id: MemberId, why: string): void {
    const peer = this.members.get(id);
    if (!peer) return;
    this.members.delete(id);
    this.batches.drop(id);
    const queued = this.flow.queuedBytes(id);
    this.flow.forget(id);
    debug('nats %s: %s left (%s)', this.ctx.busName, id, why);
    if (peer.partial) debug('nats %s: dropped a partial frame from %s', this.ctx.busName, id);
    if (this.reporting) {
      this.ctx.host.leave(id);
      if (queued > 0) this.ctx.host.writable();
    }
  }

  private duplicateSeen(): void {
    if (this.state === 'joining') {
      this.lostClaim ??= 'a live member on the NATS server';
      return;
    }
    if (this.duplicateReported) return;
    this.duplicateReported = true;
    this.report(new ShmbusError('ERR_SHMBUS_DUPLICATE_ID', `another process is using this member's id ${show(this.ctx.id)} on bus ${show(this.ctx.busName)} (seen after a reconnect)`));
  }

  private parseControl(msg: NatsMsg): { c: Control; id: MemberId; epoch: number } | undefined {
    const d = msg.data;
    if (d.length === 0 || d[0] !== JSON_START) return undefined;
    let c: Control;
    try {
      c = JSON.parse(Buffer.from(d.buffer, d.byteOffset, d.byteLength).toString('utf8'));
    } catch {
      return undefined;
    }
    if (c === null || typeof c !== 'object' || !isMemberId(c.id) || !isU32(c.e)) return undefined;
    return { c, id: c.id, epoch: c.e };
  }

  private onPresence(msg: NatsMsg): void {
    if (this.state === 'closed') return;
    const p = this.parseControl(msg);
    if (!p) return;
    const { c, id, epoch } = p;
    switch (c.t) {
      case 'query': {
        // A member joining (or one back after a reconnect, m: 1) asks who is here.
        if (id === this.ctx.id && epoch !== this.epoch) this.contest(c);
        if (typeof c.r === 'string' && (this.state === 'member' || this.state === 'joining')) {
          this.publishControl(c.r, { t: 'here', s: this.state === 'member' ? 'm' : 'j' });
        }
        if (c.m === 1) this.seenWith(c, id, epoch);
        return;
      }
      case 'hello':
      case 'hb':
        this.seenWith(c, id, epoch);
        return;
      case 'bye': {
        const peer = this.members.get(id);
        if (peer && peer.epoch === epoch) {
          this.deadEpochs.set(id, epoch);
          this.remove(id, 'closed');
        }
        return;
      }
    }
  }

  /** Another process wants this member's id while this one is joining: the lower instance wins. */
  private contest(c: Control): void {
    if (this.state === 'member') return; // it will hear 'taken' or 'here' from this member
    if (this.state === 'joining' && typeof c.i === 'string' && c.i < this.inst) {
      this.lostClaim ??= 'another process that is opening it now';
    }
  }

  private onInbox(msg: NatsMsg): void {
    if (this.state === 'closed') return;
    const rest = msg.subject.slice(this.subjects.inbox.length + 1);
    if (msg.data.length === 0 && msg.headers?.code === 503) {
      if (rest === 'c') return this.claimAnswer?.('none');
      if (rest.startsWith('n.')) {
        // A frame or probe to a member found nobody listening: its connection is gone. Right
        // after this member's own reconnect (a server restart), others may just not be back yet:
        // then only the presence expiry counts.
        if (Date.now() - this.reconnectedAt < this.tune.presenceTimeout) return;
        const [, token, epochText] = rest.split('.');
        const id = this.fromToken(token);
        const peer = id === undefined ? undefined : this.members.get(id);
        if (peer && String(peer.epoch) === epochText) this.remove(peer.id, 'no responders');
      }
      return;
    }
    const p = this.parseControl(msg);
    if (!p) return;
    const { c, id, epoch } = p;
    if (rest === 'c') {
      if (id === this.ctx.id && epoch !== this.epoch && typeof c.t === 'string') {
        this.claimAnswer?.({ t: c.t, i: typeof c.i === 'string' ? c.i : undefined });
      }
      return;
    }
    if (rest === 'h' && c.t === 'here') {
      if (id === this.ctx.id) {
        if (epoch === this.epoch) return;
        if (c.s === 'm') this.duplicateSeen();
        else this.contest(c);
        return;
      }
      if (c.s === 'm') this.seenWith(c, id, epoch);
    }
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  private fromToken(token: string): MemberId | undefined {
    if (this.tokenCache.has(token)) return this.tokenCache.get(token);
    const id = tokenId(token);
    if (this.tokenCache.size > 10_000) this.tokenCache.clear();
    this.tokenCache.set(token, id);
    return id;
  }

  private onData(msg: NatsMsg): void {
    if (this.state === 'closed') return;
    const d = msg.data;
    if (d.length === 0) return;
    if (d[0] === JSON_START) return this.onMemberControl(msg);
    const kind = d[0];
    if (kind < WHOLE || kind > BATCH || d.length < FIXED) return;
    const data = Buffer.from(d.buffer, d.byteOffset, d.byteLength);
    const stream = data[1];
    if (stream !== UNICAST && stream !== BROADCAST) return;
    const fromLen = data[2];
    const ackFlags = data[3] & (ACK_U | ACK_B);
    const epoch = data.readUInt32LE(4);
    const seq = data.readUInt32LE(8);
    let at = FIXED;
    let total = 0;
    if (kind === FIRST) {
      if (data.length < FIXED + 4) return;
      total = data.readUInt32LE(FIXED);
      at += 4;
    }
    const ackAt = at;
    if (ackFlags !== 0) at += ACK_BLOCK;
    if (data.length < at + fromLen) return;
    const id = this.fromToken(data.toString('latin1', at, at + fromLen));
    at += fromLen;
    if (id === undefined) return;
    const peer = this.seen(id, epoch);
    if (!peer) return;
    const payload = data.subarray(at);
    // What the sender took from this member counts before its frame is handed on.
    if (ackFlags !== 0 && data.readUInt32LE(ackAt) === this.epoch) {
      this.flow.acked(id, {
        u: ackFlags & ACK_U ? data.readUInt32LE(ackAt + 4) : undefined,
        b: ackFlags & ACK_B ? data.readUInt32LE(ackAt + 8) : undefined,
      });
    }

    if (kind === MORE || kind === LAST) {
      const partial = peer.partial;
      if (!partial || partial.stream !== stream || partial.seq !== seq || partial.filled + payload.length > partial.buf.length) {
        // The beginning was lost: nothing of this frame is delivered.
        if (partial) peer.partial = undefined;
        return;
      }
      payload.copy(partial.buf, partial.filled);
      partial.filled += payload.length;
      if (kind === MORE) return;
      peer.partial = undefined;
      if (partial.filled !== partial.buf.length) {
        this.report(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(id)} sent a chunked frame of the wrong length`));
        return;
      }
      return this.take(peer, stream, seq, partial.buf);
    }

    // WHOLE or FIRST: a new frame in this stream.
    if (peer.partial) {
      peer.partial = undefined;
      this.report(new ShmbusError('ERR_SHMBUS_TRANSPORT', `a large message from member ${show(id)} was cut off and dropped`));
    }
    if (kind === WHOLE) return this.take(peer, stream, seq, payload);
    if (kind === BATCH) {
      if (!readBatch(payload, (s, frame) => this.take(peer, stream, s, frame))) {
        this.report(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(id)} sent a batch of messages that can't be read; the rest of it is dropped`));
      }
      return;
    }
    if (total > this.ctx.maxMessageSize) {
      this.report(new ShmbusError('ERR_SHMBUS_TOO_LARGE', `member ${show(id)} sent a message of ${total} bytes, over this member's maxMessageSize (${this.ctx.maxMessageSize}); dropped`));
      // Taken (as nothing), so that its chunks are ignored and the sender's queue empties.
      this.reportLost(id, this.flow.took(id, stream, seq, 0));
      return;
    }
    if (payload.length > total) return;
    const buf = Buffer.allocUnsafe(total);
    payload.copy(buf, 0);
    peer.partial = { stream, seq, buf, filled: payload.length };
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
    const p = this.parseControl(msg);
    if (!p) return;
    const { c, id, epoch } = p;
    switch (c.t) {
      case 'claim':
        if (id !== this.ctx.id || epoch === this.epoch) return;
        this.contest(c);
        if (typeof msg.reply === 'string' && msg.reply !== '') this.publishControl(msg.reply, { t: this.state === 'member' ? 'taken' : 'joining' });
        return;
      case 'ack': {
        // Only from a known member: a process still joining acknowledges broadcasts too.
        const peer = this.members.get(id);
        if (c.te !== this.epoch || !peer || peer.epoch !== epoch) return;
        peer.lastSeen = Date.now();
        this.flow.acked(id, c);
        return;
      }
      case 'sync': {
        // The sender has sent up to (u, b): whatever of that has not arrived by now never will.
        const peer = this.seen(id, epoch);
        if (!peer) return;
        let lost = this.flow.sentThere(id, c);
        if (peer.partial) {
          peer.partial = undefined;
          lost++;
        }
        this.reportLost(id, lost);
        return;
      }
    }
  }

  // -------------------------------------------------------------------------------------------
  // Timers: expiry, probes of members with pending requests, syncs of stalled queues

  private sweep(): void {
    if (this.state !== 'member') return;
    const now = Date.now();
    const period = Math.min(PROBE, this.tune.heartbeatInterval / 2);
    const lag = now - this.lastSweep - period;
    this.lastSweep = now;
    if (lag > period) {
      // This process was busy: what others sent meanwhile is still unread. Don't count that time.
      for (const peer of this.members.values()) peer.lastSeen += lag;
      return;
    }
    for (const peer of [...this.members.values()]) {
      if (now - peer.lastSeen > Math.max(this.tune.presenceTimeout, 2.5 * peer.interval)) {
        this.remove(peer.id, `not heard from for ${now - peer.lastSeen} ms`);
        continue;
      }
      const stalled = this.flow.stalled(peer.id, SYNC_AFTER, now);
      if (this.pendingTo.has(peer.id) || stalled) {
        const { u, b } = this.flow.sentUpTo(peer.id);
        this.publishControl(this.subjects.member(peer.token), { t: 'sync', u, b }, this.noResponderSubject(peer));
      }
    }
  }
}

export function createNatsTransport(ctx: TransportContext): Transport {
  return new NatsTransport(ctx);
}
