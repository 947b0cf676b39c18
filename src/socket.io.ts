/**
 * shmbus/socket.io: socket.io's cluster protocol carried by a shmbus bus, a drop-in for
 * @socket.io/cluster-adapter. socket.io-adapter's ClusterAdapterWithHeartbeat holds the protocol
 * (broadcasts, rooms, fetchSockets, serverSideEmit, heartbeats); this file only publishes its
 * messages on the bus, feeds back what arrives, and tells it at once when a server's member
 * leaves or dies (peer:leave), so that pending requests settle with the living servers' answers
 * instead of waiting out their timeout; and it keeps the timers of broadcasts with client acks
 * itself, so that close() can clear them.
 *
 * Imported on its own (`shmbus/socket.io`): `shmbus` itself never loads socket.io.
 */
import { randomBytes } from 'node:crypto';
import { debuglog } from 'node:util';
import { Adapter, ClusterAdapterWithHeartbeat, MessageType, type BroadcastOptions, type ClusterAdapterOptions, type ClusterMessage, type ClusterResponse, type ServerId } from 'socket.io-adapter';
import { Bus, type MessageInfo } from './bus';
import { ShmbusError, invalidArg } from './errors';
import { clusterRole, hostToken, show, type MemberId } from './ids';
import { open } from './index';
import type { OpenOptions } from './options';

const debug = debuglog('shmbus');

/** The bus name the adapter and setupPrimary() use unless `bus` names another. */
const BUS_NAME = 'socket.io';
/** Cluster messages, to every member. */
const MESSAGE = 'socket.io';
/** Answers to one server's request, to that server's member only. */
const RESPONSE = 'socket.io:response';
/** socket.io-adapter's own default for serverSideEmit and fetchSockets. */
const DEFAULT_REQUESTS_TIMEOUT = 5000;

export interface AdapterOptions extends ClusterAdapterOptions {
  /** How long serverSideEmit with an acknowledgement and fetchSockets wait for every server, in ms. Default 5000. */
  requestsTimeout?: number;
  /**
   * The bus to carry the cluster: an open Bus (the caller closes it), or open() options. Default:
   * a bus named 'socket.io' under an id of this adapter's own, closed by io.close().
   */
  bus?: Bus | OpenOptions;
}

export interface PrimaryOptions {
  /** The open() options the servers' adapters use, when they name another bus than 'socket.io'. */
  bus?: OpenOptions;
}

/** A response on the bus names the server that asked, as @socket.io/cluster-adapter's do. */
type Response = ClusterResponse & { requesterUid: ServerId };

/** What this file needs of ClusterAdapterWithHeartbeat beyond its protected API (pinned by the peer range ~2.5). */
interface HeartbeatInternals {
  nodesMap: Map<ServerId, number>;
  ackRequests: Map<string, { clientCountCallback: (clientCount: number) => void; ack: (...args: unknown[]) => void }>;
  customRequests: Map<string, { timeout: NodeJS.Timeout; missingUids: Set<ServerId>; responses: unknown[]; resolve: (...args: unknown[]) => void }>;
  removeNode(uid: ServerId): void;
}

/**
 * Makes the adapter of each namespace: `io.adapter(createAdapter())`. The namespaces of one
 * server share one bus.
 */
export function createAdapter(options: AdapterOptions = {}): (nsp: any) => ShmbusAdapter {
  if (options === null || typeof options !== 'object') throw invalidArg(`createAdapter() options must be an object, got ${show(options)}`);
  const requestsTimeout = options.requestsTimeout ?? DEFAULT_REQUESTS_TIMEOUT;
  if (!Number.isSafeInteger(requestsTimeout) || requestsTimeout <= 0) throw invalidArg(`requestsTimeout must be a positive integer (ms), got ${show(requestsTimeout)}`);
  const shared = new SharedBus(options.bus);
  const heartbeat = { heartbeatInterval: options.heartbeatInterval, heartbeatTimeout: options.heartbeatTimeout };
  // socket.io-adapter fills in its defaults only for keys that are absent, not undefined.
  for (const key of Object.keys(heartbeat) as (keyof typeof heartbeat)[]) if (heartbeat[key] === undefined) delete heartbeat[key];
  // A function, not an arrow: socket.io calls it with `new`.
  return function adapterOf(nsp: any) {
    return new ShmbusAdapter(nsp, heartbeat, requestsTimeout, shared);
  };
}

/**
 * Call in a cluster primary, as with @socket.io/cluster-adapter. On the 'process' transport it
 * opens the bus there, unref'd, as the hub the workers' messages go through (it is no socket.io
 * server); on the others the servers reach each other directly and it does nothing. Pass the
 * servers' `bus` options when they name another bus.
 */
export function setupPrimary(options: PrimaryOptions = {}): void {
  const busOptions: OpenOptions = { name: BUS_NAME, ...options.bus };
  // A worker is never a hub: there it does nothing, as @socket.io/cluster-adapter's.
  if (clusterRole().worker || transportOf(busOptions) !== 'process') return;
  const key = busOptions.name as string;
  if (hubs.has(key)) return;
  hubs.set(
    key,
    open(busOptions).then(
      (bus) => bus.unref(),
      (err) => process.emitWarning(`shmbus/socket.io: setupPrimary() could not open the bus ${show(key)}: ${(err as Error).message}`, { code: 'SHMBUS_SOCKETIO' }),
    ),
  );
}
const hubs = new Map<string, Promise<unknown>>();

/**
 * The transport open() will pick, as src/transports/select.ts does: only to know whether the
 * primary must be a hub (opening a bus to find out would make it a member on shm and nats).
 */
function transportOf(options: OpenOptions): string {
  const chosen = process.env.SHMBUS_TRANSPORT || options.transport || 'auto';
  if (chosen !== 'auto') return chosen;
  if (options.nats !== undefined) return 'nats';
  return require('./native').nativeUnavailableReason() === undefined ? 'shm' : 'process';
}

/** One send waiting for the bus to open, or for a full queue to drain. */
interface Outgoing {
  action: string;
  data: unknown;
  to: MemberId | undefined;
  done: (err?: unknown) => void;
}

/**
 * The bus of one createAdapter(): opened at the first namespace's adapter unless given, and
 * closed with the last one's. Sends go out in the order made: they wait while the bus opens, and
 * after a send refused for backpressure every later one waits for bus.drain() too, so a full
 * queue delays cluster messages instead of losing them.
 */
class SharedBus {
  private bus: Bus | undefined;
  private opening: Promise<Bus> | undefined;
  private waiting: Outgoing[] = [];
  private flushing = false;
  private users = 0;
  private readonly owned: boolean;

  constructor(private readonly given: Bus | OpenOptions | undefined) {
    this.owned = !(given instanceof Bus);
    if (given instanceof Bus) {
      if (given.stats().codec !== 'v8') throw invalidArg(`shmbus/socket.io needs a bus with codec 'v8' (binary payloads and socket.io's packets), not ${show(given.stats().codec)}`);
    } else if (given !== undefined) {
      if (given === null || typeof given !== 'object') throw invalidArg(`bus must be an open Bus or open() options, got ${show(given)}`);
      if (given.codec !== undefined && given.codec !== 'v8') throw invalidArg(`shmbus/socket.io needs codec 'v8' (binary payloads and socket.io's packets), not ${show(given.codec)}`);
    }
  }

  acquire(): Promise<Bus> {
    this.users++;
    if (!this.opening) {
      this.opening = this.given instanceof Bus ? Promise.resolve(this.given) : open({ name: BUS_NAME, id: ownId(), ...this.given });
      this.opening.then(
        (bus) => {
          this.bus = bus;
          this.flush();
        },
        (err) => {
          process.emitWarning(`shmbus/socket.io: the adapter's bus did not open, so this server is alone: ${(err as Error).message}`, { code: 'SHMBUS_SOCKETIO' });
          for (const out of this.waiting.splice(0)) out.done(err);
        },
      );
    }
    return this.opening;
  }

  async release(): Promise<void> {
    if (--this.users > 0 || !this.owned || !this.opening) return;
    const opening = this.opening;
    this.opening = undefined;
    const bus = await opening.catch(() => undefined);
    // What close() published (ADAPTER_CLOSE) goes out first.
    while (this.waiting.length > 0 && bus && !this.flushing) this.flush();
    this.bus = undefined;
    await bus?.close();
  }

  send(action: string, data: unknown, to?: MemberId): Promise<void> {
    if (this.bus && this.waiting.length === 0) {
      try {
        this.bus.sendMessage(action, data, to);
        return Promise.resolve();
      } catch (err) {
        if ((err as ShmbusError).code !== 'ERR_SHMBUS_BACKPRESSURE') return Promise.reject(err);
      }
    }
    return new Promise((resolve, reject) => {
      this.waiting.push({ action, data, to, done: (err) => (err === undefined ? resolve() : reject(err)) });
      if (this.bus) this.flush();
    });
  }

  private flush(): void {
    const bus = this.bus;
    if (!bus || this.flushing) return;
    while (this.waiting.length > 0) {
      const out = this.waiting[0];
      try {
        bus.sendMessage(out.action, out.data, out.to);
      } catch (err) {
        if ((err as ShmbusError).code === 'ERR_SHMBUS_BACKPRESSURE') {
          this.flushing = true;
          bus.drain().then(
            () => ((this.flushing = false), this.flush()),
            (closed) => ((this.flushing = false), this.waiting.splice(0).forEach((o) => o.done(closed))),
          );
          return;
        }
        this.waiting.shift();
        out.done(err);
        continue;
      }
      this.waiting.shift();
      out.done();
    }
  }
}

/** An id no other process holds, never the worker id: two apps on one host don't collide. */
function ownId(): string {
  return `socket.io-${hostToken().slice(0, 32)}-${process.pid}-${randomBytes(3).toString('hex')}`;
}

/** The adapter of one namespace. */
export class ShmbusAdapter extends ClusterAdapterWithHeartbeat {
  /** The member each known server (its uid) speaks from: where its answers go, whose leave drops it. */
  private readonly servers = new Map<ServerId, MemberId>();
  /** Broadcasts with client acknowledgements: the servers that have not yet said how many clients they wait for. */
  private readonly clientCounts = new Map<string, Set<ServerId>>();
  /** Broadcasts with client acknowledgements: when each is forgotten (its timeout). */
  private readonly ackTimers = new Map<string, NodeJS.Timeout>();
  private bus: Bus | undefined;
  private closed = false;

  private readonly onBusMessage = (message: ClusterMessage, msg: MessageInfo): void => {
    if (message?.nsp !== this.nsp.name || message.uid === this.uid) return;
    this.servers.set(message.uid, msg.from);
    this.onMessage(message);
    if (message.type === MessageType.ADAPTER_CLOSE) this.servers.delete(message.uid);
  };

  private readonly onBusResponse = (response: Response, msg: MessageInfo): void => {
    if (response?.requesterUid !== this.uid) return;
    this.servers.set(response.uid, msg.from);
    if (response.type === MessageType.BROADCAST_CLIENT_COUNT) this.clientCounts.get(response.data.requestId)?.delete(response.uid);
    this.onResponse(response);
  };

  private readonly onPeerLeave = (id: MemberId): void => {
    for (const [uid, member] of this.servers) {
      if (member !== id) continue;
      this.servers.delete(uid);
      this.dropServer(uid);
    }
  };

  constructor(
    nsp: any,
    heartbeat: ClusterAdapterOptions,
    private readonly requestsTimeout: number,
    private readonly shared: SharedBus,
  ) {
    super(nsp, heartbeat);
    shared.acquire().then(
      (bus) => {
        if (this.closed) return;
        this.bus = bus;
        bus.on(MESSAGE, this.onBusMessage);
        bus.on(RESPONSE, this.onBusResponse);
        bus.on('peer:leave', this.onPeerLeave);
      },
      () => undefined, // SharedBus warned
    );
    this.init();
  }

  private get internals(): HeartbeatInternals {
    return this as unknown as HeartbeatInternals;
  }

  protected override doPublish(message: ClusterMessage): Promise<string> {
    // '' : no offsets, so no connection state recovery (as @socket.io/cluster-adapter).
    return this.shared.send(MESSAGE, message).then(() => '');
  }

  protected override doPublishResponse(requesterUid: ServerId, response: ClusterResponse): Promise<void> {
    const to = this.servers.get(requesterUid);
    if (to === undefined) return Promise.reject(new Error(`no member is known for server ${requesterUid}: it left`));
    return this.shared.send(RESPONSE, { ...response, requesterUid }, to);
  }

  override fetchSockets(opts: Parameters<ClusterAdapterWithHeartbeat['fetchSockets']>[0]): Promise<any[]> {
    return super.fetchSockets({ ...opts, flags: { ...opts.flags, timeout: opts.flags?.timeout ?? this.requestsTimeout } });
  }

  /**
   * As ClusterAdapter's, but the timer that forgets the request at its timeout is this adapter's:
   * close() clears it (socket.io-adapter's own would keep the process alive for the whole timeout
   * after io.close()).
   */
  override broadcastWithAck(packet: any, opts: BroadcastOptions, clientCountCallback: (clientCount: number) => void, ack: (...args: any[]) => void): void {
    if (opts.flags?.local) return super.broadcastWithAck(packet, opts, clientCountCallback, ack);
    const requestId = randomBytes(8).toString('hex');
    this.internals.ackRequests.set(requestId, { clientCountCallback, ack });
    this.clientCounts.set(requestId, new Set(this.internals.nodesMap.keys()));
    this.ackTimers.set(requestId, setTimeout(() => this.forgetAcks(requestId), opts.flags?.timeout));
    this.publish({ type: MessageType.BROADCAST, data: { packet, requestId, opts: { rooms: [...opts.rooms], except: [...(opts.except ?? [])], flags: opts.flags ?? {} } } });
    Adapter.prototype.broadcastWithAck.call(this, packet, opts, clientCountCallback, ack);
  }

  override serverSideEmit(packet: any[]): Promise<any> {
    const requests = this.internals.customRequests;
    const before = requests.size;
    const done = super.serverSideEmit(packet);
    // socket.io-adapter waits a fixed 5 s; the request it just made gets requestsTimeout instead.
    if (requests.size > before && this.requestsTimeout !== DEFAULT_REQUESTS_TIMEOUT) {
      const [requestId, request] = [...requests].at(-1)!;
      clearTimeout(request.timeout);
      request.timeout = setTimeout(() => {
        if (requests.get(requestId) !== request) return;
        requests.delete(requestId);
        request.resolve(new Error(`timeout reached: missing ${request.missingUids.size} responses`), request.responses);
      }, this.requestsTimeout);
    }
    return done;
  }

  override close(): Promise<void> {
    if (this.closed) return Promise.resolve();
    super.close(); // publishes ADAPTER_CLOSE
    this.closed = true;
    for (const requestId of [...this.ackTimers.keys()]) this.forgetAcks(requestId);
    if (this.bus) {
      this.bus.off(MESSAGE, this.onBusMessage);
      this.bus.off(RESPONSE, this.onBusResponse);
      this.bus.off('peer:leave', this.onPeerLeave);
    }
    return this.shared.release();
  }

  /** A broadcast with client acknowledgements past its timeout (socket.io has told the emitter). */
  private forgetAcks(requestId: string): void {
    clearTimeout(this.ackTimers.get(requestId));
    this.ackTimers.delete(requestId);
    this.internals.ackRequests.delete(requestId);
    this.clientCounts.delete(requestId);
  }

  /** A server that left: no answer will come from it. */
  private dropServer(uid: ServerId): void {
    debug('socket.io %s: server %s left', this.nsp.name, uid);
    // A broadcast waiting for its client count: it has no clients to wait for any more. (One that
    // already counted its clients can't be taken back through socket.io's callbacks: the emit
    // then waits for its timeout.)
    for (const [requestId, waiting] of this.clientCounts) {
      if (!waiting.delete(uid)) continue;
      this.onResponse({ type: MessageType.BROADCAST_CLIENT_COUNT, uid, nsp: this.nsp.name, data: { requestId, clientCount: 0 } });
    }
    this.internals.removeNode(uid);
  }
}
