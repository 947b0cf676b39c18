import { debuglog } from 'node:util';
import { ShmbusError, invalidArg, sizeText } from './errors';
import { codecs, type Codec } from './codec';
import { FrameKind, MAX_ACTION_CHARS, makeHead, parseFrame, type ParsedFrame } from './frame';
import { checkMemberId, compareIds, isMemberId, show } from './ids';
import type { ResolvedOptions } from './options';
import type { LinkName, MemberId, Transport, TransportHost, TransportName } from './transports/transport';

const debug = debuglog('shmbus');

/** What a listener or handler learns about the message besides its data. */
export interface MessageInfo {
  action: string;
  from: MemberId;
}

export type Listener = (data: any, msg: MessageInfo) => unknown;
export type Handler = (data: any, msg: MessageInfo) => unknown;
export type PeerListener = (id: MemberId) => void;
export type ErrorListener = (err: Error) => void;
/** Event names a bus emits itself: they can't be sent, handled or requested. */
export type ReservedEvent = 'peer:join' | 'peer:leave' | 'error';
/** An action name: any string but a reserved event name. */
export type Action<A extends string> = A extends ReservedEvent ? never : A;

export interface RequestOptions {
  /** The member that answers. Required. */
  to: MemberId;
  /** In ms; default the bus's requestTimeout. */
  timeout?: number;
  signal?: AbortSignal;
}

export interface WaitForOptions {
  /** In ms; default the bus's requestTimeout. */
  timeout?: number;
}

export interface PeerStats {
  /** How this member reaches that one: 'self' for this member itself, else the links' transport. */
  via: 'self' | LinkName;
  queuedBytes: number;
  sentMessages: number;
  sentBytes: number;
  receivedMessages: number;
  receivedBytes: number;
  /** Messages that arrived for an action with no listener. */
  drops: number;
  /** Frames from this member that could not be read. */
  errors: number;
}

export interface BusStats {
  id: MemberId;
  transport: TransportName;
  codec: string;
  /** Per member, this one included (messages to self are counted under its id). */
  peers: Record<string, PeerStats>;
}

const RESERVED = new Set(['peer:join', 'peer:leave', 'error']);
const HEAD_CACHE_LIMIT = 1024;
/** A frame of n bytes grows a target's queue by at most 2n + 256 bytes (transport framing, chunk headers). */
const QUEUE_GROWTH_FACTOR = 2;
const QUEUE_GROWTH_BYTES = 256;

interface PendingRequest {
  to: MemberId;
  resolve(value: unknown): void;
  reject(err: Error): void;
  timer: NodeJS.Timeout;
  signal?: AbortSignal;
  onAbort?: () => void;
}

interface Waiter {
  done(err?: Error): void;
  check(): boolean;
}

/** Checks an action name given by the user: non-empty, at most 256 characters, not reserved. */
function checkAction(action: unknown): string {
  if (typeof action !== 'string' || action.length === 0 || action.length > MAX_ACTION_CHARS) {
    throw invalidArg(`an action must be a non-empty string of at most ${MAX_ACTION_CHARS} characters, got ${show(action)}; use a shorter name`);
  }
  if (RESERVED.has(action)) {
    throw invalidArg(`${show(action)} is a reserved event name: it can't be sent, handled or requested`);
  }
  return action;
}

function checkTimeout(value: unknown, what: string, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !(value > 0) || value > 2 ** 31 - 1) {
    throw invalidArg(`${what} must be a number of ms above 0 and below 2^31, got ${show(value)}`);
  }
  return value;
}

/** What the bus counts per member; stats() adds the rest. */
type PeerCounters = Omit<PeerStats, 'via' | 'queuedBytes'>;

function newStats(): PeerCounters {
  return { sentMessages: 0, sentBytes: 0, receivedMessages: 0, receivedBytes: 0, drops: 0, errors: 0 };
}

export class Bus {
  /** This member's id. */
  readonly id: MemberId;
  private readonly options: ResolvedOptions;
  private readonly codec: Codec;
  private transportImpl!: Transport;
  private readonly members = new Set<MemberId>();
  private readonly listeners = new Map<string, Listener[]>();
  private readonly handlers = new Map<string, Handler>();
  private readonly pending = new Map<number, PendingRequest>();
  /** Pending requests per target (self excluded), as the transport is told. */
  private readonly pendingTo = new Map<MemberId, number>();
  private readonly waiters = new Set<Waiter>();
  private readonly counters = new Map<MemberId, PeerCounters>();
  private readonly messageHeads = new Map<string, Buffer>();
  /** Per member: its queuedBytes() when last read, and handedBytes then (see belowQueueLimit). */
  private readonly queuedSeen = new Map<MemberId, { queued: number; at: number }>();
  /** What the queues may have grown by since the bus opened: an upper bound, always rising. */
  private handedBytes = 0;
  private nextRequestId = 1;
  private opened = false;
  private closed = false;
  private closing?: Promise<void>;
  /** Frames that arrived while open() was resolving, delivered on a later turn. */
  private early: Array<[MemberId, Buffer]> | null = [];
  /** Frames sent to this member itself, delivered on a later turn. */
  private selfQueue: Buffer[] = [];
  private selfQueuedBytes = 0;
  private selfFlushScheduled = false;
  /** The last action sent with flags 0 and its head (checked, and the head made, once). */
  private lastAction: string | undefined;
  private lastHead: Buffer | undefined;
  /** The member counter() and seenOf() last looked up, and their entries: a hash lookup per send or frame saved. */
  private lastCounterId: MemberId | undefined;
  private lastCounter: PeerCounters | undefined;
  private lastSeenId: MemberId | undefined;
  private lastSeen: { queued: number; at: number } | undefined;

  /** @internal use open() */
  constructor(options: ResolvedOptions) {
    this.id = options.id;
    this.options = options;
    this.codec = codecs[options.codec];
  }

  /** The transport in use. */
  get transport(): TransportName {
    return this.transportImpl.name;
  }

  /** @internal */
  async start(transport: Transport): Promise<void> {
    this.transportImpl = transport;
    await transport.open();
    for (const id of transport.peers()) this.members.add(id);
    this.opened = true;
    debug('open %s as %s on %s with %d peers', this.options.name, this.id, transport.name, this.members.size);
    if (this.early && this.early.length > 0) setImmediate(() => this.flushEarly());
    else this.early = null;
  }

  /** @internal the TransportHost the bus gives its transport */
  readonly host: TransportHost = {
    frame: (from, frame) => this.onFrame(from, frame, 0, frame.length),
    frameIn: (from, bytes, start, end) => this.onFrame(from, bytes, start, end),
    join: (id) => this.onJoin(id),
    leave: (id) => this.onLeave(id),
    error: (err) => this.emitError(err),
    writable: () => this.checkWaiters(),
  };

  /** The other live members' ids: numbers ascending, then strings. */
  peers(): MemberId[] {
    return [...this.members].sort(compareIds);
  }

  /** Resolves once every id in `ids` is a member (this one counts). */
  waitFor(ids: MemberId | readonly MemberId[], options: WaitForOptions = {}): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const list = (Array.isArray(ids) ? ids : [ids]).map((id) => checkMemberId(id));
      const timeout = checkTimeout(options?.timeout, 'timeout', this.options.requestTimeout);
      if (this.closed) throw new ShmbusError('ERR_SHMBUS_CLOSED', 'waitFor() on a closed bus');
      const waiter: Waiter = {
        check: () => list.every((id) => id === this.id || this.members.has(id)),
        done: (err) => {
          clearTimeout(timer);
          this.waiters.delete(waiter);
          if (err) reject(err);
          else resolve();
        },
      };
      if (waiter.check()) return resolve();
      const timer = setTimeout(() => {
        const missing = list.filter((id) => id !== this.id && !this.members.has(id));
        waiter.done(new ShmbusError('ERR_SHMBUS_TIMEOUT', `waitFor() timed out after ${timeout} ms; not members: ${missing.map((id) => show(id)).join(', ')}`));
      }, timeout);
      timer.unref();
      this.waiters.add(waiter);
    });
  }

  /**
   * Sends `data` under `action` to every member (this one included), to one member, or to a list.
   * Returns the number of members it was handed to. Throws, sending nothing, if any target is not
   * a member, the data can't be encoded, it is too large or a target's queue is full.
   */
  sendMessage<A extends string>(action: Action<A>, data?: unknown, to?: MemberId | readonly MemberId[]): number {
    if (this.closed) throw new ShmbusError('ERR_SHMBUS_CLOSED', 'sendMessage() on a closed bus');
    const again = action === this.lastAction;
    if (!again) checkAction(action);
    const targets = this.targetsOf(to);
    const { body, flags } = this.codec.encode(data);
    let head = flags !== 0 ? undefined : again ? this.lastHead : this.messageHeads.get(action);
    if (!head) {
      head = makeHead(FrameKind.MESSAGE, flags, 0, action);
      if (flags === 0 && this.messageHeads.size < HEAD_CACHE_LIMIT) this.messageHeads.set(action, head);
    }
    if (flags === 0) {
      this.lastAction = action;
      this.lastHead = head;
    }
    this.deliver(targets, head, body);
    return targets.length;
  }

  private targetsOf(to: MemberId | readonly MemberId[] | undefined): MemberId[] {
    if (to === undefined) return [this.id, ...this.members];
    // The common case, one member (only valid ids are members): no list to check for repeats.
    if (!Array.isArray(to) && (to === this.id || this.members.has(to as MemberId))) return [to as MemberId];
    const list = Array.isArray(to) ? to : [to];
    const targets: MemberId[] = [];
    const seen = new Set<MemberId>();
    for (const id of list) {
      if (!isMemberId(id)) checkMemberId(id, 'a target id');
      if (seen.has(id)) continue;
      seen.add(id);
      if (id !== this.id && !this.members.has(id)) throw this.unknownPeer(id);
      targets.push(id);
    }
    return targets;
  }

  /** ERR_SHMBUS_UNKNOWN_PEER for `id`, naming (a few of) the members there are. */
  private unknownPeer(id: MemberId): ShmbusError {
    const shown = 3;
    const peers = this.peers();
    const members = [this.id, ...peers.slice(0, shown)].map((m) => (m === this.id ? `${show(m)} (this one)` : show(m))).join(', ');
    const more = peers.length > shown ? ` and ${peers.length - shown} more` : '';
    return new ShmbusError(
      'ERR_SHMBUS_UNKNOWN_PEER',
      `member ${show(id)} is not on bus ${show(this.options.name)} now (its members: ${members}${more}); if it is starting, await bus.waitFor(${show(id)}) first`,
    );
  }

  /** Checks size and every target's queue, then hands the frame to all of them. */
  private deliver(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array, checkQueues = true): void {
    const size = head.length + body.length;
    if (size > this.options.maxMessageSize) {
      throw new ShmbusError('ERR_SHMBUS_TOO_LARGE', `a message of ${sizeText(size)} is over maxMessageSize (${sizeText(this.options.maxMessageSize)}); send less at a time, or raise maxMessageSize on every member of the bus`);
    }
    let toSelf = false;
    for (const id of targets) {
      if (id === this.id) toSelf = true;
      if (!checkQueues || this.belowQueueLimit(id, size)) continue;
      const queued = this.queuedBytes(id);
      if (queued > 0 && queued + size > this.options.maxQueueBytes) {
        throw new ShmbusError('ERR_SHMBUS_BACKPRESSURE', `member ${show(id)} has ${sizeText(queued)} queued, and this message would take it over maxQueueBytes (${sizeText(this.options.maxQueueBytes)}); await bus.drain() and retry`);
      }
      if (id !== this.id) this.sawQueued(id, queued);
    }
    const others = toSelf ? targets.filter((id) => id !== this.id) : targets;
    if (others.length > 0) {
      this.transportImpl.send(others, head, body);
      this.handedBytes += QUEUE_GROWTH_FACTOR * size + QUEUE_GROWTH_BYTES;
    }
    if (toSelf) this.enqueueSelf(head, body);
    for (const id of targets) {
      const c = this.counter(id);
      c.sentMessages++;
      c.sentBytes += size;
    }
  }

  private queuedBytes(id: MemberId): number {
    return id === this.id ? this.selfQueuedBytes : this.transportImpl.queuedBytes(id);
  }

  /**
   * Whether member `id`'s queue surely has room for `size` more bytes without asking the
   * transport (for shm, a native call per message). A queue grows only by what this bus hands
   * the transport, so it is at most what was read last plus the growth allowed since then.
   */
  private belowQueueLimit(id: MemberId, size: number): boolean {
    if (id === this.id) return false;
    const seen = this.seenOf(id);
    return seen !== undefined && seen.queued + (this.handedBytes - seen.at) + size <= this.options.maxQueueBytes;
  }

  private seenOf(id: MemberId): { queued: number; at: number } | undefined {
    if (id === this.lastSeenId) return this.lastSeen;
    const seen = this.queuedSeen.get(id);
    if (seen !== undefined) {
      this.lastSeenId = id;
      this.lastSeen = seen;
    }
    return seen;
  }

  private sawQueued(id: MemberId, queued: number): void {
    const seen = this.seenOf(id);
    if (seen === undefined) this.queuedSeen.set(id, { queued, at: this.handedBytes });
    else {
      seen.queued = queued;
      seen.at = this.handedBytes;
    }
  }

  private enqueueSelf(head: Uint8Array, body: Uint8Array): void {
    const frame = Buffer.concat([head, body]);
    this.selfQueue.push(frame);
    this.selfQueuedBytes += frame.length;
    if (!this.selfFlushScheduled) {
      this.selfFlushScheduled = true;
      setImmediate(() => this.flushSelf());
    }
  }

  private flushSelf(): void {
    this.selfFlushScheduled = false;
    const frames = this.selfQueue;
    this.selfQueue = [];
    this.selfQueuedBytes = 0;
    for (const frame of frames) this.dispatch(this.id, frame, 0, frame.length);
    this.checkWaiters();
  }

  /** Listens for messages under `action`, or for 'peer:join', 'peer:leave' and 'error'. */
  on(action: 'peer:join' | 'peer:leave', listener: PeerListener): this;
  on(action: 'error', listener: ErrorListener): this;
  on<A extends string>(action: Action<A>, listener: Listener): this;
  on(action: string, listener: (...args: any[]) => unknown): this {
    if (!RESERVED.has(action)) checkAction(action);
    if (typeof listener !== 'function') throw invalidArg(`a listener must be a function, got ${show(listener)}`);
    const list = this.listeners.get(action);
    if (list) list.push(listener);
    else this.listeners.set(action, [listener]);
    return this;
  }

  /** Removes a listener added with on(). */
  off(action: 'peer:join' | 'peer:leave', listener: PeerListener): this;
  off(action: 'error', listener: ErrorListener): this;
  off<A extends string>(action: Action<A>, listener: Listener): this;
  off(action: string, listener: (...args: any[]) => unknown): this {
    const list = this.listeners.get(action);
    if (!list) return this;
    const at = list.lastIndexOf(listener);
    if (at >= 0) {
      const next = list.slice();
      next.splice(at, 1);
      if (next.length > 0) this.listeners.set(action, next);
      else this.listeners.delete(action);
    }
    return this;
  }

  /** Answers requests for `action`; one handler per action. */
  handle<A extends string>(action: Action<A>, handler: Handler): this {
    checkAction(action);
    if (typeof handler !== 'function') throw invalidArg(`a handler must be a function, got ${show(handler)}`);
    if (this.handlers.has(action)) throw invalidArg(`${show(action)} already has a handler`);
    this.handlers.set(action, handler);
    return this;
  }

  /** Asks member `options.to` to handle `action` with `data`; resolves its answer. */
  request<T = any, A extends string = string>(action: Action<A>, data: unknown, options: RequestOptions): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      checkAction(action);
      if (options === null || typeof options !== 'object') throw invalidArg('request() needs options with `to`, the member that answers');
      if (options.to === undefined) throw invalidArg('request() needs `to`, the member that answers');
      const to = checkMemberId(options.to, 'to');
      const timeout = checkTimeout(options.timeout, 'timeout', this.options.requestTimeout);
      const signal = options.signal;
      if (signal !== undefined && !(signal instanceof AbortSignal)) throw invalidArg('signal must be an AbortSignal');
      if (this.closed) throw new ShmbusError('ERR_SHMBUS_CLOSED', 'request() on a closed bus');
      if (signal?.aborted) throw new ShmbusError('ERR_SHMBUS_ABORTED', 'the request was aborted before it was sent', { cause: signal.reason });
      if (to !== this.id && !this.members.has(to)) throw this.unknownPeer(to);
      const { body, flags } = this.codec.encode(data);
      const requestId = this.nextRequestId;
      this.nextRequestId = this.nextRequestId >= 0xffffffff ? 1 : this.nextRequestId + 1;
      this.countPending(to, 1);
      try {
        this.deliver([to], makeHead(FrameKind.REQUEST, flags, requestId, action), body);
      } catch (err) {
        this.countPending(to, -1);
        throw err;
      }

      const entry: PendingRequest = {
        to,
        resolve: resolve as (value: unknown) => void,
        reject,
        timer: setTimeout(() => {
          this.settle(requestId, new ShmbusError('ERR_SHMBUS_TIMEOUT', `request ${show(action)} to ${show(to)} got no answer within ${timeout} ms`));
        }, timeout),
      };
      entry.timer.unref();
      if (signal) {
        entry.signal = signal;
        entry.onAbort = () => this.settle(requestId, new ShmbusError('ERR_SHMBUS_ABORTED', `request ${show(action)} to ${show(to)} was aborted`, { cause: signal.reason }));
        signal.addEventListener('abort', entry.onAbort, { once: true });
      }
      this.pending.set(requestId, entry);
    });
  }

  /** Ends a pending request with an error, or with a value when `err` is undefined. */
  private settle(requestId: number, err: Error | undefined, value?: unknown): void {
    const entry = this.pending.get(requestId);
    if (!entry) return;
    this.pending.delete(requestId);
    this.countPending(entry.to, -1);
    clearTimeout(entry.timer);
    if (entry.signal && entry.onAbort) entry.signal.removeEventListener('abort', entry.onAbort);
    if (err) entry.reject(err);
    else entry.resolve(value);
  }

  /** Keeps the transport told how many requests to `to` are pending. */
  private countPending(to: MemberId, delta: number): void {
    if (to === this.id || !this.transportImpl.pendingRequests) return;
    const count = (this.pendingTo.get(to) ?? 0) + delta;
    if (count > 0) this.pendingTo.set(to, count);
    else this.pendingTo.delete(to);
    this.transportImpl.pendingRequests(to, count);
  }

  /** Resolves once every member's queue is below half of maxQueueBytes. */
  drain(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.closed) return reject(new ShmbusError('ERR_SHMBUS_CLOSED', 'drain() on a closed bus'));
      const limit = this.options.maxQueueBytes / 2;
      const waiter: Waiter = {
        check: () => this.queuedBytes(this.id) < limit && [...this.members].every((id) => this.queuedBytes(id) < limit),
        done: (err) => {
          this.waiters.delete(waiter);
          if (err) reject(err);
          else resolve();
        },
      };
      if (waiter.check()) return resolve();
      this.waiters.add(waiter);
    });
  }

  private checkWaiters(): void {
    for (const waiter of this.waiters) if (waiter.check()) waiter.done();
  }

  /** Keeps the process from exiting while the bus is open (the default). */
  ref(): this {
    if (!this.closed) this.transportImpl.ref();
    return this;
  }

  /** Lets the process exit while the bus is open. */
  unref(): this {
    if (!this.closed) this.transportImpl.unref();
    return this;
  }

  /** Counters per member, and bytes queued for each. */
  stats(): BusStats {
    const peers: Record<string, PeerStats> = {};
    for (const id of [this.id, ...this.peers()]) {
      const transport = this.transportImpl;
      const via = id === this.id ? 'self' : transport.via ? transport.via(id) : (this.transport as LinkName);
      // A member its transport no longer reaches (it left there, and the bus hears of it next).
      if (via === undefined) continue;
      peers[String(id)] = { via, queuedBytes: this.queuedBytes(id), ...this.counter(id) };
    }
    return { id: this.id, transport: this.transport, codec: this.codec.name, peers };
  }

  /** Leaves the bus. Pending requests, waitFor() and drain() reject with ERR_SHMBUS_CLOSED. Idempotent. */
  close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    const err = () => new ShmbusError('ERR_SHMBUS_CLOSED', 'the bus was closed');
    for (const requestId of [...this.pending.keys()]) this.settle(requestId, err());
    for (const waiter of [...this.waiters]) waiter.done(err());
    this.members.clear();
    debug('close %s as %s', this.options.name, this.id);
    this.closing = this.transportImpl.close();
    return this.closing;
  }

  private counter(id: MemberId): PeerCounters {
    if (id === this.lastCounterId) return this.lastCounter!;
    let c = this.counters.get(id);
    if (!c) {
      c = newStats();
      this.counters.set(id, c);
    }
    this.lastCounterId = id;
    this.lastCounter = c;
    return c;
  }

  private onJoin(id: MemberId): void {
    if (this.closed || this.members.has(id)) return;
    this.members.add(id);
    debug('peer %s joined', id);
    if (!this.opened) return;
    this.emitLocal('peer:join', id);
    this.checkWaiters();
  }

  private onLeave(id: MemberId): void {
    if (this.closed || !this.members.delete(id)) return;
    debug('peer %s left', id);
    this.counters.delete(id);
    this.queuedSeen.delete(id);
    if (this.lastCounterId === id) this.lastCounterId = this.lastCounter = undefined;
    if (this.lastSeenId === id) this.lastSeenId = this.lastSeen = undefined;
    for (const [requestId, entry] of this.pending) {
      if (entry.to === id) this.settle(requestId, new ShmbusError('ERR_SHMBUS_PEER_GONE', `member ${show(id)} left before answering`));
    }
    if (!this.opened) return;
    this.emitLocal('peer:leave', id);
    this.checkWaiters();
  }

  private onFrame(from: MemberId, bytes: Buffer, start: number, end: number): void {
    if (this.closed) return;
    if (this.early) this.early.push([from, bytes.subarray(start, end)]);
    else this.dispatch(from, bytes, start, end);
  }

  private flushEarly(): void {
    const early = this.early ?? [];
    this.early = null;
    for (const [from, frame] of early) this.dispatch(from, frame, 0, frame.length);
  }

  /** The frame bytes[start, end) from `from`. */
  private dispatch(from: MemberId, bytes: Buffer, start: number, end: number): void {
    const c = this.counter(from);
    c.receivedMessages++;
    c.receivedBytes += end - start;
    const parsed = parseFrame(bytes, start, end);
    if (!parsed) {
      c.errors++;
      this.emitError(new ShmbusError('ERR_SHMBUS_PROTOCOL', `member ${show(from)} sent a frame that can't be read (${end - start} bytes)`));
      return;
    }
    switch (parsed.kind) {
      case FrameKind.MESSAGE:
        return this.onMessage(from, parsed, c);
      case FrameKind.REQUEST:
        return this.onRequest(from, parsed);
      case FrameKind.REPLY:
      case FrameKind.FAILURE:
        return this.onReply(from, parsed, c);
    }
  }

  private decode(from: MemberId, parsed: ParsedFrame, c: PeerCounters): { ok: true; data: unknown } | { ok: false; err: ShmbusError } {
    try {
      return { ok: true, data: this.codec.decode(parsed.bytes, parsed.bodyStart, parsed.bodyEnd, parsed.flags) };
    } catch (cause) {
      c.errors++;
      const err = new ShmbusError('ERR_SHMBUS_SERIALIZE', `a ${parsed.bodyEnd - parsed.bodyStart}-byte body for ${show(parsed.action)} from ${show(from)} can't be decoded with the ${this.codec.name} codec`, { cause });
      return { ok: false, err };
    }
  }

  private onMessage(from: MemberId, parsed: ParsedFrame, c: PeerCounters): void {
    const list = this.listeners.get(parsed.action);
    if (!list) {
      c.drops++;
      debug('no listener for %s from %s', parsed.action, from);
      return;
    }
    const decoded = this.decode(from, parsed, c);
    if (!decoded.ok) return this.emitError(decoded.err);
    const info: MessageInfo = { action: parsed.action, from };
    const failed = (thrown: unknown) => this.emitError(listenerError(`the listener for ${show(parsed.action)} failed on a message from member ${show(from)}`, thrown));
    for (const listener of list) {
      try {
        const result = listener(decoded.data, info);
        if (result instanceof Promise) result.catch(failed);
      } catch (err) {
        failed(err);
      }
    }
  }

  private onRequest(from: MemberId, parsed: ParsedFrame): void {
    const { action, requestId } = parsed;
    const handler = this.handlers.get(action);
    if (!handler) {
      return this.fail(from, requestId, action, 'ERR_SHMBUS_NO_HANDLER', `member ${show(this.id)} has no handler for ${show(action)}`);
    }
    const decoded = this.decode(from, parsed, this.counter(from));
    if (!decoded.ok) return this.fail(from, requestId, action, 'ERR_SHMBUS_REMOTE', decoded.err.message, decoded.err.code);
    new Promise((resolve) => resolve(handler(decoded.data, { action, from }))).then(
      (value) => this.reply(from, requestId, action, value),
      (err) => {
        const e = asError(err) as Error & { code?: unknown };
        this.fail(from, requestId, action, 'ERR_SHMBUS_REMOTE', e.message, typeof e.code === 'string' ? e.code : undefined);
      },
    );
  }

  private reply(to: MemberId, requestId: number, action: string, value: unknown): void {
    if (this.closed || (to !== this.id && !this.members.has(to))) return;
    let encoded;
    try {
      encoded = this.codec.encode(value);
    } catch (err) {
      const e = err as ShmbusError;
      return this.fail(to, requestId, action, 'ERR_SHMBUS_REMOTE', e.message, e.code);
    }
    const head = makeHead(FrameKind.REPLY, encoded.flags, requestId, action);
    if (head.length + encoded.body.length > this.options.maxMessageSize) {
      return this.fail(to, requestId, action, 'ERR_SHMBUS_REMOTE', `the answer to ${show(action)} is over maxMessageSize`, 'ERR_SHMBUS_TOO_LARGE');
    }
    // Answers are not refused for a full queue: the requester is waiting for this one.
    this.deliver([to], head, encoded.body, false);
  }

  private fail(to: MemberId, requestId: number, action: string, code: string, message: string, remoteCode?: string): void {
    if (this.closed || (to !== this.id && !this.members.has(to))) return;
    const body = Buffer.from(JSON.stringify({ code, message, remoteCode }), 'utf8');
    this.deliver([to], makeHead(FrameKind.FAILURE, 0, requestId, action), body, false);
  }

  private onReply(from: MemberId, parsed: ParsedFrame, c: PeerCounters): void {
    const entry = this.pending.get(parsed.requestId);
    if (!entry || entry.to !== from) {
      debug('an answer from %s to request %d that is not pending', from, parsed.requestId);
      return;
    }
    if (parsed.kind === FrameKind.REPLY) {
      const decoded = this.decode(from, parsed, c);
      if (decoded.ok) this.settle(parsed.requestId, undefined, decoded.data);
      else this.settle(parsed.requestId, decoded.err);
      return;
    }
    let failure: { code?: unknown; message?: unknown; remoteCode?: unknown } = {};
    try {
      failure = JSON.parse(parsed.bytes.toString('utf8', parsed.bodyStart, parsed.bodyEnd));
    } catch {
      c.errors++;
    }
    const message = typeof failure.message === 'string' ? failure.message : `request ${show(parsed.action)} failed at ${show(from)}`;
    const remoteCode = typeof failure.remoteCode === 'string' ? failure.remoteCode : undefined;
    const code = failure.code === 'ERR_SHMBUS_NO_HANDLER' ? 'ERR_SHMBUS_NO_HANDLER' : 'ERR_SHMBUS_REMOTE';
    this.settle(parsed.requestId, new ShmbusError(code, message, { remoteCode }));
  }

  private emitLocal(event: 'peer:join' | 'peer:leave', id: MemberId): void {
    const failed = (thrown: unknown) => this.emitError(listenerError(`a ${show(event)} listener failed for member ${show(id)}`, thrown));
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        const result = (listener as unknown as PeerListener)(id) as unknown;
        if (result instanceof Promise) result.catch(failed);
      } catch (err) {
        failed(err);
      }
    }
  }

  private emitError(err: Error): void {
    debug('error: %s', err.message);
    const list = this.listeners.get('error');
    if (!list) {
      // Node prints a warning's `detail` below it: there, the stack of what a listener threw.
      const cause = (err as { cause?: unknown }).cause;
      if (cause instanceof Error && typeof cause.stack === 'string') Object.defineProperty(err, 'detail', { value: cause.stack, configurable: true });
      process.emitWarning(err);
      return;
    }
    for (const listener of list) {
      try {
        (listener as unknown as ErrorListener)(err);
      } catch (thrown) {
        process.emitWarning(asError(thrown));
      }
    }
  }
}

/** ERR_SHMBUS_LISTENER for a listener that threw or rejected `thrown` (its cause). */
function listenerError(what: string, thrown: unknown): ShmbusError {
  const reason = thrown instanceof Error ? `${thrown.name}: ${thrown.message}` : show(thrown);
  return new ShmbusError('ERR_SHMBUS_LISTENER', `${what}: ${reason}. Catch errors inside listeners; bus.on('error') hears these`, { cause: thrown });
}

function asError(value: unknown): Error {
  return value instanceof Error ? value : new Error(String(value));
}
