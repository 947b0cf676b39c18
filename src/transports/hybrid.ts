/**
 * The hybrid transport: one bus across hosts. Members that share a bus directory link through the
 * shm transport's rings; every other pair links through the nats transport. Both are used as they
 * are, through the Transport interface; this file only decides, per pair, which one carries it.
 *
 * Every member is in both: in its host's bus directory (<shm root>/<bus>+hybrid, so that members
 * of the bus on transport 'shm' are never linked to by hybrid members) and on the NATS server,
 * which gives the bus its membership, its ids across hosts and its remote links.
 *
 * Locality is proven, not guessed from host names. A member's NATS presence carries a locality
 * key: the kernel's boot id and the device and inode of its bus directory, read once its shm
 * transport has joined (a live member holds a lock in that directory, so the directory it stats
 * is the one its fellows use while it lives; a live directory's device and inode are unique on one
 * kernel, and the boot id tells kernels apart). No file is written for it: the last member out of
 * a directory removes it, which another file would prevent. A member whose key differs is remote:
 * it is reported at once, via 'nats'. A member with this member's key shares its directory: it is
 * reported only once the shm handshake with it has completed, via 'shm'; if that does not happen
 * within LINK_DEADLINE_MS (the shm transport's own handshake limit), an 'error' event says so and
 * the member stays unreported until its link comes up. The comparison gives the same answer at
 * both ends of a pair, so both send on the same path. Where the boot id can't be read, the key is
 * random: every pair is then remote.
 *
 * A pair's path is fixed before its first frame (a member is reported only then) and never
 * changes while both live, so per-pair order is the path's own. A local member must also be on
 * NATS (its id claimed there, ERR_SHMBUS_DUPLICATE_ID for an id held on another host; the flock in
 * the directory refuses one held on this host), but once reported it lives and dies by its shm
 * link alone: a lost NATS server leaves the local links working, and remote members come back as
 * they are heard again. Frames that arrive from a member before its path is fixed wait for it.
 *
 * A broadcast goes through the rings to the local members and once through NATS (one publish on
 * the bus's broadcast subject when it is for every remote member) for the others. Local members
 * get that NATS copy too and drop it: a frame through NATS from a member of this host's directory
 * is never delivered, so each member gets exactly one copy.
 *
 * A hybrid member also has a sentinel in the plain bus directory <shm root>/<bus>, so that it and
 * the members of the bus on transport 'shm' meet and refuse each other by name (shm-sentinel.ts).
 *
 * Options: the `shm` section tunes the local links, the `nats` section the NATS side, as for
 * those transports.
 */
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import { debuglog } from 'node:util';
import { ShmbusError } from '../errors';
import { show } from '../ids';
import { createNatsTransport } from './nats';
import { ShmTransport } from './shm';
import { screenForSentinel, sentinelName } from './shm-sentinel';
import type { LinkName, MemberId, Transport, TransportContext, TransportHost } from './transport';

const debug = debuglog('shmbus');

/** How long a member with this member's locality key may take to complete its shm handshake. */
const LINK_DEADLINE_MS = 5000;
/** Frames kept per member whose path is not fixed yet; more are dropped (and said so). */
const EARLY_FRAMES = 4096;

type Path = 'shm' | 'nats';

interface Member {
  /** The path it is reported on; undefined while not reported. */
  via?: Path;
  /** Its locality key, from its NATS presence. */
  key?: string;
  /** The nats transport counts it as a member. */
  onNats: boolean;
  /** Its shm link is up. */
  shmUp: boolean;
  /** It was reported via shm and its link went down: its NATS presence is of that old life. */
  gone: boolean;
  /**
   * Its shm link went down before it was reported, with frames it sent through the rings: it had
   * opened (a member sends only then), so once its NATS presence places it here, it is reported,
   * its frames delivered, and then its leave.
   */
  leftEarly?: boolean;
  early?: Array<[Path, Buffer]>;
  /** Reported, and frames of its path that wait for a later turn (see report()). */
  held?: Buffer[];
  timer?: NodeJS.Timeout;
}

/** This kernel's boot id and the bus directory's device and inode; random where unreadable. */
function localityKey(dir: string): string {
  let boot: string;
  try {
    boot = fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch (err) {
    debug('hybrid: no boot id (%s): every member counts as remote', (err as Error).message);
    return `r${randomBytes(16).toString('hex')}`;
  }
  const st = fs.statSync(dir, { bigint: true });
  return `${boot}/${st.dev}/${st.ino}`;
}

class HybridTransport implements Transport {
  readonly name = 'hybrid' as const;
  private readonly ctx: TransportContext;
  private readonly shm: ShmTransport;
  private readonly nats: Transport;
  /** This member's sentinel in the plain bus directory (none for an id too long to name one). */
  private readonly sentinel?: ShmTransport;
  /** What the sentinel reported while open() ran: reported once it is done (undefined after). */
  private sentinelErrors?: Error[] = [];
  /** This member's presence fields: the locality key, set once the bus directory is joined. */
  private readonly presence: { k?: string } = {};
  private key = '';
  private readonly members = new Map<MemberId, Member>();
  /** The members reported via shm, and via nats: counts kept at report and leave. */
  private localCount = 0;
  private remoteCount = 0;
  /** The members reported on each path, as target lists; each undefined until needed after a change. */
  private listed: { shm?: readonly MemberId[]; nats?: readonly MemberId[] } = {};
  /**
   * What a frame for every remote member is handed to the nats transport as: every member it
   * knows (its broadcast), or null where that can't be done now (see natsTargets()); undefined
   * until needed after a change.
   */
  private natsAll?: readonly MemberId[] | null;
  private closed = false;

  constructor(ctx: TransportContext) {
    this.ctx = ctx;
    const sections = (ctx.options ?? {}) as { shm?: Record<string, unknown>; nats?: Record<string, unknown> };
    this.shm = new ShmTransport({ ...ctx, options: sections.shm ?? {}, host: this.hostFor('shm') }, `${ctx.busName}+hybrid`);
    this.nats = createNatsTransport(
      { ...ctx, options: sections.nats ?? {}, host: this.hostFor('nats') },
      { flavor: 'hybrid', presence: this.presence, heard: (id, fields) => this.heard(id, fields) },
    );
    const name = sentinelName(ctx.id);
    if (name !== undefined) {
      const ignore = (): void => undefined;
      const error = (err: Error): void => {
        if (this.sentinelErrors) this.sentinelErrors.push(err);
        else ctx.host.error(err);
      };
      const host: TransportHost = { frame: ignore, join: ignore, leave: ignore, writable: ignore, error };
      const options = { ...sections.shm, ringSize: 4096, spinUs: 0 };
      this.sentinel = new ShmTransport({ ...ctx, id: name, options, host }, ctx.busName, (member) => screenForSentinel(this.sentinel!.dir, ctx.busName, member));
    }
  }

  async open(): Promise<void> {
    // The directory first: its key goes into the NATS presence, and a local member is reported
    // only once both its link and its presence are there.
    await this.shm.open();
    // Once this member holds its id in its own directory (what makes a sentinel a proven one),
    // and before it is on NATS (so that no member counts it before its open() is nearly done).
    await this.sentinel?.open().catch((err: Error) => debug('hybrid %s: no sentinel in the plain bus directory: %s', this.ctx.busName, err.message));
    this.key = localityKey(this.shm.dir);
    this.presence.k = this.key;
    debug('hybrid %s: locality key %s', this.ctx.busName, this.key);
    await this.nats.open();
    for (const id of this.nats.peers()) this.member(id).onNats = true;
    this.changed();
    for (const id of [...this.members.keys()]) this.settle(id);
    // On a later turn: after open() has resolved, where the bus's 'error' listeners are.
    const held = this.sentinelErrors!;
    this.sentinelErrors = undefined;
    if (held.length > 0) setImmediate(() => held.forEach((err) => this.closed || this.ctx.host.error(err)));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const m of this.members.values()) clearTimeout(m.timer);
    this.members.clear();
    await Promise.all([this.sentinel?.close(), this.shm.close(), this.nats.close()]);
  }

  peers(): MemberId[] {
    const out: MemberId[] = [];
    for (const [id, m] of this.members) if (m.via !== undefined) out.push(id);
    return out;
  }

  /** The path to a reported member; undefined for any other id (unknown, gone, or not placed yet). */
  via(to: MemberId): LinkName | undefined {
    return this.members.get(to)?.via;
  }

  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const members = this.members;
    if (targets.length === 1) {
      if (members.get(targets[0])?.via === 'shm') this.shm.send(targets, head, body);
      else this.nats.send(targets, head, body);
      return;
    }
    let local = 0;
    for (const id of targets) if (members.get(id)?.via === 'shm') local++;
    const remote = targets.length - local;
    // NATS first: it is the one that may refuse (a closed connection), and then nobody got it.
    if (local === 0) return this.nats.send(this.natsTargets(targets), head, body);
    if (remote === 0) return this.shm.send(targets, head, body);
    if (local === this.localCount && remote === this.remoteCount) {
      // Every member: the lists are kept from one change to the next.
      this.nats.send(this.natsTargets(undefined), head, body);
      this.shm.send(this.reportedVia('shm'), head, body);
      return;
    }
    const locals: MemberId[] = [];
    const remotes: MemberId[] = [];
    for (const id of targets) (members.get(id)?.via === 'shm' ? locals : remotes).push(id);
    this.nats.send(this.natsTargets(remotes), head, body);
    this.shm.send(locals, head, body);
  }

  /**
   * To every remote member (two or more), a frame goes as the nats transport's broadcast: one
   * publish, addressed to every member it knows (local members drop their copy). Only when every
   * member it knows has a known path, or key: one not placed yet might take the copy as its own.
   * `remote`: the remote targets, or undefined for every remote member.
   */
  private natsTargets(remote: readonly MemberId[] | undefined): readonly MemberId[] {
    if (this.remoteCount < 2) return remote ?? this.reportedVia('nats');
    if (remote !== undefined && remote.length !== this.remoteCount) return remote;
    if (this.natsAll === undefined) {
      const all = this.nats.peers();
      this.natsAll = all.length >= 2 && all.every((id) => this.members.get(id)?.via !== undefined || this.members.get(id)?.key !== undefined) ? all : null;
    }
    return this.natsAll ?? remote ?? this.reportedVia('nats');
  }

  /** The members reported via `path`, as a target list kept until the next change. */
  private reportedVia(path: Path): readonly MemberId[] {
    let list = this.listed[path];
    if (list === undefined) {
      const ids: MemberId[] = [];
      for (const [id, m] of this.members) if (m.via === path) ids.push(id);
      list = this.listed[path] = ids;
    }
    return list;
  }

  /** Whom a path reaches or the nats transport knows, or what is known of them, changed: the kept lists are stale. */
  private changed(): void {
    this.listed = {};
    this.natsAll = undefined;
  }

  queuedBytes(to: MemberId): number {
    const via = this.members.get(to)?.via;
    return via === 'shm' ? this.shm.queuedBytes(to) : via === 'nats' ? this.nats.queuedBytes(to) : 0;
  }

  pendingRequests(to: MemberId, count: number): void {
    if (this.members.get(to)?.via === 'nats' || count === 0) this.nats.pendingRequests?.(to, count);
  }

  ref(): void {
    this.shm.ref();
    this.nats.ref();
    this.sentinel?.ref();
  }

  unref(): void {
    this.shm.unref();
    this.nats.unref();
    this.sentinel?.unref();
  }

  // -------------------------------------------------------------------------------------------
  // What the two transports report

  private hostFor(path: Path): TransportHost {
    const host = this.ctx.host;
    return {
      frame: (from, frame) => this.frame(path, from, frame),
      // A frame inside a batch goes on as it came (no Buffer of its own) when it is delivered now.
      frameIn: host.frameIn && ((from, bytes, start, end) => {
        const m = this.members.get(from);
        if (m?.via === path && m.held === undefined && !this.closed) host.frameIn!(from, bytes, start, end);
        else this.frame(path, from, bytes.subarray(start, end));
      }),
      join: (id) => {
        const m = this.member(id);
        if (path === 'shm') m.shmUp = true;
        else m.onNats = true;
        this.changed();
        this.settle(id);
      },
      leave: (id) => this.leave(path, id),
      error: (err) => host.error(err),
      writable: () => host.writable(),
    };
  }

  private member(id: MemberId): Member {
    let m = this.members.get(id);
    if (!m) {
      m = { onNats: false, shmUp: false, gone: false };
      this.members.set(id, m);
    }
    return m;
  }

  private heard(id: MemberId, fields: Record<string, unknown>): void {
    if (this.closed) return;
    const key = typeof fields.k === 'string' ? fields.k : undefined;
    const m = this.member(id);
    if (m.key !== undefined && m.key !== key && m.via !== undefined) {
      debug('hybrid %s: %s now says locality key %s (was %s); its path stays %s', this.ctx.busName, id, key, m.key, m.via);
    }
    if (m.key !== key) this.changed();
    m.key = key;
    this.settle(id);
  }

  /** Fixes `id`'s path if what is known of it allows, and reports it. */
  private settle(id: MemberId): void {
    const m = this.members.get(id);
    if (!m || this.closed || m.via !== undefined) return;
    if (!m.onNats && !m.shmUp && !m.leftEarly) return this.forget(id, m);
    if (m.leftEarly && !(m.onNats && m.key === this.key && !m.gone)) {
      // Until its NATS presence is heard; a member that never gets one was never one.
      m.timer ??= setTimeout(() => {
        m.timer = undefined;
        if (!m.leftEarly || this.members.get(id) !== m) return;
        m.leftEarly = false;
        m.early = undefined;
        this.settle(id);
      }, LINK_DEADLINE_MS);
      m.timer.unref();
      return;
    }
    if (m.gone || !m.onNats || m.key === undefined) return;
    if (m.key !== this.key) return this.report(id, m, 'nats');
    if (m.shmUp || m.leftEarly) return this.report(id, m, 'shm');
    m.timer ??= setTimeout(() => {
      m.timer = undefined;
      if (this.closed || m.via !== undefined || m.shmUp || this.members.get(id) !== m) return;
      const err = new ShmbusError('ERR_SHMBUS_TRANSPORT', `member ${show(id)} of bus ${show(this.ctx.busName)} says it uses this member's bus directory ${this.shm.dir}, but no shm link to it came up within ${LINK_DEADLINE_MS} ms; it is not counted as a member until one does`);
      debug('hybrid %s: %s', this.ctx.busName, err.message);
      this.ctx.host.error(err);
    }, LINK_DEADLINE_MS);
    m.timer.unref();
  }

  private report(id: MemberId, m: Member, via: Path): void {
    clearTimeout(m.timer);
    m.timer = undefined;
    m.via = via;
    if (via === 'shm') this.localCount++;
    else this.remoteCount++;
    this.changed();
    debug('hybrid %s: %s joined via %s', this.ctx.busName, id, via);
    const early = m.early?.filter(([path]) => path === via).map(([, frame]) => frame);
    m.early = undefined;
    this.ctx.host.join(id);
    // What came before the join is delivered on a later turn, as a transport does with frames
    // read together with a join (so that a listener added once waitFor() resolves sees them);
    // frames on its path wait behind them.
    if (early === undefined || early.length === 0) return;
    m.held = early;
    setImmediate(() => {
      const held = m.held;
      m.held = undefined;
      if (this.closed || this.members.get(id) !== m || m.via !== via) return;
      for (const frame of held ?? []) this.ctx.host.frame(id, frame);
      if (m.leftEarly) {
        m.leftEarly = false;
        if (!m.shmUp) this.leave('shm', id);
      }
    });
  }

  private frame(path: Path, from: MemberId, frame: Buffer): void {
    const m = this.members.get(from);
    if (!m || this.closed) return;
    if (m.via === path) {
      if (m.held) m.held.push(frame);
      else this.ctx.host.frame(from, frame);
      return;
    }
    // The NATS copy of a broadcast from a member of this directory: it came through the rings.
    if (m.via !== undefined || (path === 'nats' && m.key === this.key)) return;
    m.early ??= [];
    if (m.early.length < EARLY_FRAMES) m.early.push([path, frame]);
    else if (m.early.length === EARLY_FRAMES) debug('hybrid %s: frames from %s dropped: its path is not fixed yet', this.ctx.busName, from);
  }

  private leave(path: Path, id: MemberId): void {
    const m = this.members.get(id);
    if (!m || this.closed) return;
    if (path === 'shm') {
      m.shmUp = false;
      if (m.via === undefined && !m.gone && m.early?.some(([p]) => p === 'shm')) m.leftEarly = true;
      else m.early = m.early?.filter(([p]) => p !== 'shm');
    } else {
      m.onNats = false;
      m.key = undefined;
      m.gone = false;
      m.early = m.early?.filter(([p]) => p !== 'nats');
    }
    this.changed();
    if (m.via === path) {
      m.via = undefined;
      if (path === 'shm') this.localCount--;
      else this.remoteCount--;
      m.held = undefined;
      // Its NATS presence may outlive it (kill -9) until the nats transport hears of its end.
      m.gone = path === 'shm' && m.onNats;
      debug('hybrid %s: %s left (its %s link)', this.ctx.busName, id, path);
      this.ctx.host.leave(id);
    }
    this.settle(id);
  }

  private forget(id: MemberId, m: Member): void {
    clearTimeout(m.timer);
    this.members.delete(id);
  }
}

export function createHybridTransport(ctx: TransportContext): Transport {
  return new HybridTransport(ctx);
}
