/**
 * The process transport: Node's own IPC channel. The cluster primary or `child_process.fork`
 * parent that opens a bus is its hub; its IPC children that open a bus of the same name join it,
 * and the hub relays frames between them. Works wherever Node does; slower than shm.
 *
 * Envelopes on the channel are objects tagged with `__shmbus` so that an application's own
 * `process.on('message')` can tell them apart. The frames written to one member in one turn of
 * the loop go as one envelope, a batch (one child.send, not one per frame: a send costs more
 * than the frames in it), which the hub passes on to the target as it came. A batch is a Buffer
 * on an 'advanced' channel and a base64 string on a 'json' one (where a Buffer would become an
 * array of numbers).
 */
import type { ChildProcess } from 'node:child_process';
import * as diagnostics from 'node:diagnostics_channel';
import { debuglog } from 'node:util';
import { ShmbusError, duplicateId, invalidArg } from '../errors';
import { clusterRole, isMemberId, show } from '../ids';
import { Batcher, readBatch } from './batch';
import { FlowControl, UNICAST, isU32 } from './flow';
import type { MemberId, Transport, TransportContext } from './transport';

const debug = debuglog('shmbus');
const TAG = '__shmbus';
const PROTOCOL = 1;
/** A frame to several members larger than this goes once to the hub, which hands it to each. */
const FANOUT_BYTES = 64 * 1024;

type Wire = string | Uint8Array;

/**
 * Every envelope: hello/welcome/refuse/join/leave/bye for membership, F for a batch of frames to
 * one member, f for one frame to several, a for acknowledgements. A frame carries its sequence
 * number per target (s; in a batch, in each record), and a batch or a frame to a member alone the
 * acknowledgement of what the sender took from that member (k); an acknowledgement is u.
 */
interface Envelope {
  [TAG]: number;
  t: 'hello' | 'welcome' | 'refuse' | 'join' | 'leave' | 'bye' | 'F' | 'f' | 'a';
  b: string;
  id?: MemberId;
  ids?: MemberId[];
  to?: MemberId | MemberId[];
  from?: MemberId;
  d?: Wire;
  s?: number | number[];
  k?: number;
  u?: number;
  /** A Buffer in hello and welcome: how it arrives tells the other side the channel's serialization. */
  p?: unknown;
  code?: string;
  message?: string;
  holder?: string;
}

function envelope(t: Envelope['t'], bus: string, fields: Partial<Envelope> = {}): Envelope {
  return { [TAG]: PROTOCOL, t, b: bus, ...fields };
}

function isEnvelope(value: unknown): value is Envelope {
  const e = value as Envelope;
  return typeof e === 'object' && e !== null && e[TAG] === PROTOCOL && typeof e.t === 'string' && typeof e.b === 'string';
}

function toWire(frame: Buffer, json: boolean): Wire {
  return json ? frame.toString('base64') : frame;
}

function fromWire(d: unknown): Buffer | undefined {
  if (typeof d === 'string') return Buffer.from(d, 'base64');
  if (d instanceof Uint8Array) return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  return undefined;
}

/**
 * The probe hello and welcome carry. Node tells a child its channel's serialization only in an
 * environment variable that it removes before the program runs; a Buffer comes through an
 * 'advanced' channel as bytes and a JSON one as an object.
 */
const PROBE = Buffer.of(1);
const viaJson = (probe: unknown): boolean => !(probe instanceof Uint8Array);

/**
 * Hands the frames of a batch from `from` to the host, each taken first (so that what is sent in
 * answer acknowledges it); the acknowledgement it carries counts before any of them.
 */
function takeBatch(flow: FlowControl, host: TransportContext['host'], from: MemberId, d: unknown, k: unknown): void {
  if (k !== undefined) flow.acked(from, { u: k });
  const batch = fromWire(d);
  const whole = batch !== undefined && readBatch(batch, (seq, frame) => {
    flow.took(from, UNICAST, seq, frame.length);
    host.frame(from, frame);
  });
  if (!whole) host.error(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(from)} sent a batch of frames that can't be read; the rest of it is dropped`));
}

// ---------------------------------------------------------------------------------------------
// The hub side: every IPC child of this process, watched from the moment it is made.

interface ChildLink {
  child: ChildProcess;
  json: boolean;
}

/** Hellos from children for buses this process has not opened (yet), by bus name. */
const waitingHellos = new Map<string, Map<ChildProcess, Envelope>>();
const hubs = new Map<string, HubTransport>();
const watched = new WeakSet<ChildProcess>();

/** Whether this process has made a child with an IPC channel, one that could join a bus it hosts. */
let forkedAny = false;

function watchChild(child: ChildProcess): void {
  if (watched.has(child)) return;
  watched.add(child);
  // The channel is set up by the time the child is spawned.
  if (typeof child.send === 'function') forkedAny = true;
  else child.once('spawn', () => (forkedAny ||= typeof child.send === 'function'));
  child.on('message', (message: unknown) => {
    if (!isEnvelope(message)) return;
    const hub = hubs.get(message.b);
    if (hub) return hub.fromChild(child, message);
    if (message.t === 'hello') {
      let waiting = waitingHellos.get(message.b);
      if (!waiting) waitingHellos.set(message.b, (waiting = new Map()));
      waiting.set(child, message);
    } else if (message.t === 'bye') {
      waitingHellos.get(message.b)?.delete(child);
    }
  });
  const gone = () => {
    for (const waiting of waitingHellos.values()) waiting.delete(child);
    for (const hub of hubs.values()) hub.childGone(child);
  };
  child.once('exit', gone);
  child.once('disconnect', gone);
}

diagnostics.subscribe('child_process', (message) => {
  const child = (message as { process?: ChildProcess }).process;
  if (child) watchChild(child);
});

/** Cluster workers forked before this module loaded. */
function watchExistingWorkers(): void {
  const { cluster, primary } = clusterRole();
  if (!primary || !cluster) return;
  for (const worker of Object.values(cluster.workers ?? {})) if (worker) watchChild(worker.process);
}

class HubTransport implements Transport {
  readonly name = 'process' as const;
  private readonly bus: string;
  private readonly id: MemberId;
  private readonly members = new Map<MemberId, ChildLink>();
  private readonly idOf = new Map<ChildProcess, MemberId>();
  private readonly flow: FlowControl;
  private readonly batches: Batcher<MemberId>;
  private open_ = false;
  /** An open bus holds the loop like a listening server; the hub has no handle of its own that would. */
  private keepAlive?: NodeJS.Timeout;
  private aloneTimer?: NodeJS.Timeout;

  constructor(private readonly ctx: TransportContext) {
    this.bus = ctx.busName;
    this.id = ctx.id;
    this.flow = new FlowControl(ctx.maxQueueBytes, (to, ack) => this.route(to, envelope('a', this.bus, { from: this.id, u: ack.u }), null), () => ctx.host.writable());
    this.batches = new Batcher((to, batch) => {
      const link = this.members.get(to);
      if (link) post(link.child, envelope('F', this.bus, { from: this.id, d: toWire(batch, link.json), k: this.flow.piggyback(to)?.u }));
    });
  }

  async open(): Promise<void> {
    if (hubs.has(this.bus)) {
      throw new ShmbusError('ERR_SHMBUS_DUPLICATE_ID', `this process already has bus ${show(this.bus)} open on the process transport; use that Bus, or close() it before opening again`);
    }
    hubs.set(this.bus, this);
    this.open_ = true;
    this.keepAlive = setInterval(() => undefined, 2 ** 31 - 1);
    const { cluster, primary } = clusterRole();
    // Frames are Buffers: an 'advanced' channel carries them as bytes, a JSON one as base64 text.
    if (primary && cluster && cluster.settings.serialization === undefined) cluster.setupPrimary({ serialization: 'advanced' });
    watchExistingWorkers();
    const waiting = waitingHellos.get(this.bus);
    waitingHellos.delete(this.bus);
    for (const [child, hello] of waiting ?? []) this.fromChild(child, hello);
    // A program started on its own, not a cluster primary, that forks nobody is a bus of one.
    if (!primary) {
      const wait = handshakeTimeout(this.ctx);
      this.aloneTimer = setTimeout(() => {
        if (this.open_ && this.members.size === 0 && !forkedAny) {
          process.emitWarning(
            `shmbus: bus ${show(this.bus)} on the 'process' transport has no member but this process after ${wait} ms, and this process has forked none. ${WHO_SHARES} ` +
              `Started separately (or in worker threads), processes each get a bus of their own: use transport 'shm' (one host) or 'nats' for those.`,
            { code: 'SHMBUS_NO_HUB' },
          );
        }
      }, wait);
      this.aloneTimer.unref();
    }
  }

  async close(): Promise<void> {
    if (!this.open_) return;
    this.open_ = false;
    clearInterval(this.keepAlive);
    clearTimeout(this.aloneTimer);
    hubs.delete(this.bus);
    this.batches.flush();
    this.flow.close();
    for (const { child } of this.members.values()) post(child, envelope('leave', this.bus, { id: this.id }));
    for (const { child } of this.members.values()) post(child, envelope('bye', this.bus));
    this.members.clear();
    this.idOf.clear();
  }

  peers(): MemberId[] {
    return [...this.members.keys()];
  }

  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const size = head.length + body.length;
    for (const to of targets) if (this.members.has(to)) this.batches.add(to, this.flow.sendTo(to, size), head, body);
  }

  queuedBytes(to: MemberId): number {
    return this.flow.queuedBytes(to);
  }

  ref(): void {
    this.keepAlive?.ref();
  }

  unref(): void {
    this.keepAlive?.unref();
  }

  /** An envelope from one of this process's children. */
  fromChild(child: ChildProcess, e: Envelope): void {
    if (!this.open_) return;
    const from = this.idOf.get(child);
    switch (e.t) {
      case 'hello':
        return this.hello(child, e);
      case 'bye':
        if (from !== undefined) this.remove(from);
        return;
      case 'F':
        if (from === undefined || !isMemberId(e.to)) return;
        if (e.to === this.id) takeBatch(this.flow, this.ctx.host, from, e.d, e.k);
        else if (e.to !== from) this.route(e.to, envelope('F', this.bus, { from, d: e.d, k: e.k }), e.d);
        return;
      case 'f': {
        if (from === undefined) return;
        const targets = Array.isArray(e.to) ? e.to : [e.to];
        const seqs = Array.isArray(e.s) ? e.s : [e.s];
        // The acknowledgement rides only on a frame to one member.
        const k = targets.length === 1 ? e.k : undefined;
        let frame: Buffer | undefined;
        for (let i = 0; i < targets.length; i++) {
          const to = targets[i];
          const s = seqs[i];
          if (!isU32(s)) return this.ctx.host.error(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(from)} sent a frame without a sequence number`));
          if (to === this.id) {
            frame ??= fromWire(e.d);
            if (!frame) return this.ctx.host.error(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(from)} sent a frame in an unknown form`));
            this.take(from, s, k, frame);
          } else if (to !== from && isMemberId(to)) {
            this.route(to, envelope('f', this.bus, { from, d: e.d, s, k }), e.d);
          }
        }
        return;
      }
      case 'a': {
        if (from === undefined || !isMemberId(e.to)) return;
        if (e.to === this.id) this.flow.acked(from, { u: e.u });
        else this.route(e.to, envelope('a', this.bus, { from, u: e.u }), null);
        return;
      }
    }
  }

  /** A frame to this member: its acknowledgement counts first, then it is taken and handed on. */
  private take(from: MemberId, s: number, k: unknown, frame: Buffer): void {
    if (k !== undefined) this.flow.acked(from, { u: k });
    this.flow.took(from, UNICAST, s, frame.length);
    this.ctx.host.frame(from, frame);
  }

  /** Sends `e` to member `to` through its child link, re-encoding a frame for its channel. */
  private route(to: MemberId, e: Envelope, d: unknown): void {
    const link = this.members.get(to);
    if (!link) return;
    if (d !== null && d !== undefined) {
      const isString = typeof d === 'string';
      if (isString !== link.json) {
        const frame = fromWire(d);
        if (!frame) return;
        e.d = toWire(frame, link.json);
      }
    }
    post(link.child, e);
  }

  private hello(child: ChildProcess, e: Envelope): void {
    const id = e.id;
    if (!isMemberId(id)) {
      return post(child, envelope('refuse', this.bus, { code: 'ERR_SHMBUS_INVALID_ARG', message: `${show(id)} is not a member id` }));
    }
    const known = this.idOf.get(child);
    if (known !== undefined && known !== id) this.remove(known);
    if (id === this.id || (this.members.has(id) && this.members.get(id)!.child !== child)) {
      // The member words the message: the fix depends on its environment (PM2's), not the hub's.
      const holder = `process ${id === this.id ? `${process.pid}, the hub` : this.members.get(id)!.child.pid}`;
      return post(child, envelope('refuse', this.bus, { code: 'ERR_SHMBUS_DUPLICATE_ID', holder }));
    }
    const others = [this.id, ...[...this.members.keys()].filter((m) => m !== id)];
    this.members.set(id, { child, json: viaJson(e.p) });
    this.idOf.set(child, id);
    post(child, envelope('welcome', this.bus, { ids: others, p: PROBE }));
    for (const [m, link] of this.members) if (m !== id) post(link.child, envelope('join', this.bus, { id }));
    debug('process hub %s: %s joined', this.bus, id);
    this.ctx.host.join(id);
  }

  childGone(child: ChildProcess): void {
    const id = this.idOf.get(child);
    if (id !== undefined) this.remove(id);
  }

  private remove(id: MemberId): void {
    const link = this.members.get(id);
    if (!link) return;
    this.members.delete(id);
    this.idOf.delete(link.child);
    this.flow.forget(id);
    this.batches.drop(id);
    for (const other of this.members.values()) post(other.child, envelope('leave', this.bus, { id }));
    debug('process hub %s: %s left', this.bus, id);
    this.ctx.host.leave(id);
  }
}

/** A write to a member that is going away fails; its 'exit' or 'disconnect' tells the bus. */
function sendFailed(err: Error | null): void {
  if (err) debug('process transport: send failed: %s', err.message);
}

function post(target: ChildProcess | NodeJS.Process, e: Envelope): void {
  if (!target.connected || !target.send) return;
  try {
    target.send(e, undefined, undefined, sendFailed);
  } catch (err) {
    sendFailed(err as Error);
  }
}

// ---------------------------------------------------------------------------------------------
// The member side: a process whose parent is the hub.

/** Which processes can share a process bus, for the warnings of a member left alone. */
const WHO_SHARES =
  'A process bus is one hub (the process with no IPC parent that opens it: a cluster primary or a child_process.fork parent) and the children it forks that open it.';

function handshakeTimeout(ctx: TransportContext): number {
  const t = ctx.options.handshakeTimeout ?? 1000;
  if (typeof t !== 'number' || !(t > 0)) throw invalidArg(`process.handshakeTimeout must be a number of ms above 0, got ${show(t)}`);
  return t;
}

class MemberTransport implements Transport {
  readonly name = 'process' as const;
  private readonly bus: string;
  private readonly members = new Set<MemberId>();
  private readonly flow: FlowControl;
  private readonly batches: Batcher<MemberId>;
  private readonly handshakeTimeout: number;
  /** Whether the channel to the hub is a JSON one (learnt from the welcome). */
  private json = true;
  private joined = false;
  private closed = false;
  private onWelcome?: (err?: Error) => void;
  private readonly listener = (message: unknown) => this.fromHub(message);
  private readonly disconnected = () => this.hubGone();

  constructor(private readonly ctx: TransportContext) {
    this.bus = ctx.busName;
    this.flow = new FlowControl(ctx.maxQueueBytes, (to, ack) => post(process, envelope('a', this.bus, { to, u: ack.u })), () => ctx.host.writable());
    this.batches = new Batcher((to, batch) => post(process, envelope('F', this.bus, { to, d: toWire(batch, this.json), k: this.flow.piggyback(to)?.u })));
    this.handshakeTimeout = handshakeTimeout(ctx);
  }

  async open(): Promise<void> {
    if (!(await this.join())) {
      process.emitWarning(
        `shmbus: the parent process did not answer for bus ${show(this.bus)} within ${this.handshakeTimeout} ms; this member is on a bus of its own. ${WHO_SHARES} ` +
          `Open the bus in the parent before forking; where the parent is not yours (PM2, a test runner), use transport 'shm' (one host) or 'nats'.`,
        { code: 'SHMBUS_NO_HUB' },
      );
    }
  }

  /**
   * Asks the parent to join its bus: true once welcomed, false when no answer came within the
   * handshake timeout (this member then goes on alone, and joins if a welcome comes later).
   */
  async join(): Promise<boolean> {
    process.on('message', this.listener);
    process.on('disconnect', this.disconnected);
    const answered = new Promise<Error | undefined>((resolve) => {
      const timer = setTimeout(() => resolve(undefined), this.handshakeTimeout);
      this.onWelcome = (err) => {
        clearTimeout(timer);
        resolve(err);
      };
    });
    post(process, envelope('hello', this.bus, { id: this.ctx.id, p: PROBE }));
    const err = await answered;
    if (err) {
      this.detach();
      throw err;
    }
    return this.joined;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.batches.flush();
    post(process, envelope('bye', this.bus));
    this.detach();
    this.members.clear();
    this.flow.close();
  }

  private detach(): void {
    process.off('message', this.listener);
    process.off('disconnect', this.disconnected);
  }

  peers(): MemberId[] {
    return [...this.members];
  }

  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const size = head.length + body.length;
    if (targets.length === 1 || size <= FANOUT_BYTES) {
      for (const to of targets) this.batches.add(to, this.flow.sendTo(to, size), head, body);
      return;
    }
    // What waits in batches to these members goes first: frames to each arrive in order.
    this.batches.flush();
    const s = targets.map((to) => this.flow.sendTo(to, size));
    post(process, envelope('f', this.bus, { to: [...targets], d: toWire(Buffer.concat([head, body]), this.json), s }));
  }

  queuedBytes(to: MemberId): number {
    return this.flow.queuedBytes(to);
  }

  ref(): void {
    process.channel?.ref();
  }

  unref(): void {
    process.channel?.unref();
  }

  private fromHub(message: unknown): void {
    if (this.closed || !isEnvelope(message) || message.b !== this.bus) return;
    const e = message;
    const host = this.ctx.host;
    switch (e.t) {
      case 'welcome': {
        const ids = Array.isArray(e.ids) ? e.ids.filter(isMemberId) : [];
        const late = this.onWelcome === undefined;
        this.joined = true;
        this.json = viaJson(e.p);
        for (const id of ids) {
          if (id === this.ctx.id || this.members.has(id)) continue;
          this.members.add(id);
          if (late) host.join(id);
        }
        this.onWelcome?.();
        this.onWelcome = undefined;
        return;
      }
      case 'refuse': {
        const err =
          e.code === 'ERR_SHMBUS_DUPLICATE_ID'
            ? duplicateId(this.ctx.id, this.bus, typeof e.holder === 'string' ? e.holder : undefined)
            : new ShmbusError('ERR_SHMBUS_INVALID_ARG', String(e.message ?? 'the hub refused this member'));
        this.onWelcome?.(err);
        this.onWelcome = undefined;
        return;
      }
      case 'join':
        if (isMemberId(e.id) && e.id !== this.ctx.id && !this.members.has(e.id)) {
          this.members.add(e.id);
          host.join(e.id);
        }
        return;
      case 'leave':
        if (isMemberId(e.id) && this.members.delete(e.id)) {
          this.flow.forget(e.id);
          this.batches.drop(e.id);
          host.leave(e.id);
        }
        return;
      case 'bye':
        return this.hubGone();
      case 'F':
        if (isMemberId(e.from) && this.members.has(e.from)) takeBatch(this.flow, host, e.from, e.d, e.k);
        return;
      case 'f': {
        if (!isMemberId(e.from) || !this.members.has(e.from)) return;
        const frame = fromWire(e.d);
        if (!frame || !isU32(e.s)) return host.error(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(e.from)} sent a frame in an unknown form`));
        // Its acknowledgement counts before the frame is handed on; what is taken is owed before anything answers it.
        if (e.k !== undefined) this.flow.acked(e.from, { u: e.k });
        this.flow.took(e.from, UNICAST, e.s, frame.length);
        host.frame(e.from, frame);
        return;
      }
      case 'a':
        if (isMemberId(e.from)) this.flow.acked(e.from, { u: e.u });
        return;
    }
  }

  /** The hub closed or this process lost its parent: every other member is out of reach. */
  private hubGone(): void {
    const gone = [...this.members];
    this.members.clear();
    for (const id of gone) {
      this.flow.forget(id);
      this.batches.drop(id);
      this.ctx.host.leave(id);
    }
  }
}

/**
 * A cluster primary that was itself forked: it joins its parent's bus when the parent hosts one,
 * and is otherwise the hub of its own (for its workers), without a warning.
 */
class ClusterPrimaryTransport implements Transport {
  readonly name = 'process' as const;
  private readonly member: MemberTransport;
  private impl: Transport;

  constructor(private readonly ctx: TransportContext) {
    this.member = new MemberTransport(ctx);
    this.impl = this.member;
  }

  async open(): Promise<void> {
    if (await this.member.join()) return;
    await this.member.close();
    this.impl = new HubTransport(this.ctx);
    await this.impl.open();
  }

  close(): Promise<void> {
    return this.impl.close();
  }
  peers(): MemberId[] {
    return this.impl.peers();
  }
  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    this.impl.send(targets, head, body);
  }
  queuedBytes(to: MemberId): number {
    return this.impl.queuedBytes(to);
  }
  ref(): void {
    this.impl.ref();
  }
  unref(): void {
    this.impl.unref();
  }
}

/**
 * A process with no IPC parent is the hub of its bus. A forked child or cluster worker joins its
 * parent's bus; a forked cluster primary joins it if the parent hosts one, else it is the hub.
 */
export function createProcessTransport(ctx: TransportContext): Transport {
  const hasParent = typeof process.send === 'function' && process.connected;
  if (!hasParent) return new HubTransport(ctx);
  return clusterRole().primary ? new ClusterPrimaryTransport(ctx) : new MemberTransport(ctx);
}
