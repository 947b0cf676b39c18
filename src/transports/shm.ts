/**
 * The shared-memory transport: one SPSC ring per ordered pair of members, in memfds, with an
 * eventfd doorbell per member and a Unix socket per pair for the handshake and for liveness.
 * The work is in native/ (see native/member.h); this file checks the options and the bus
 * directory, and turns the addon's batches into TransportHost calls.
 *
 * A bus is the directory <root>/<busName>/, mode 0700, where <root> is the `dir` option, else
 * $SHMBUS_DIR, else $XDG_RUNTIME_DIR/shmbus-<uid> or <tmpdir>/shmbus-<uid>.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ShmbusError, duplicateId, invalidArg } from '../errors';
import { show } from '../ids';
import { loadNative, type NativeAddon, type NativeBus, type NativeEvents } from '../native';
import { shmHolder } from './shm-holder';
import { screenForShm } from './shm-sentinel';
import type { MemberId, Transport, TransportContext } from './transport';

/**
 * Bytes per ring. There is one ring per ordered pair of members and a busy ring ends up touching
 * all of its pages, so memory grows with members squared (9 members: 72 rings, 72 MiB). Larger
 * messages are cut into pieces through the ring. Measured on 2 cores, a flood of 1 MiB messages:
 * ~0.9-1.0 GB/s with 1 MiB rings, ~1.1-1.2 GB/s with 4 MiB: not worth 4x the memory by default.
 */
export const DEFAULT_RING_SIZE = 1 << 20;
/**
 * How long after its last traffic a member keeps polling its rings before it sleeps on its
 * doorbell, in µs (0: never poll). Measured on 2 cores, 64 B ping-pong p50: 13-17 µs with 20, 50
 * or 100, 30-43 µs with 0 (each hop a wake-up). 50 keeps a margin over slower round trips; it
 * costs at most 50 µs of one CPU, yielding, after each burst of traffic, and nothing when idle.
 */
export const DEFAULT_SPIN_US = 50;
/** open() waits this long for a member that accepted our connection to answer the handshake. */
const HANDSHAKE_TIMEOUT_MS = 5000;
/** A dead member's lock can outlive its sockets by a moment: look again at these delays. */
const REAP_RETRY_MS = [10, 50, 200, 1000];

const OPTION_NAMES = new Set(['dir', 'ringSize', 'spinUs']);

/**
 * Frames up to this size are copied, at send(), into a batch that reaches the addon in one call:
 * when the current turn of the JS loop ends (a microtask), when the batch is full, and before
 * anything that must see them in the rings (a larger frame, queuedBytes(), close()). A call into
 * the addon per frame cost more than the rest of a small frame's send.
 */
const STAGE_FRAME_BYTES = 4096;
/** What a batch holds at most: under the 64 KiB a ring starts with. */
const STAGE_BYTES = 32 << 10;
const STAGE_FRAMES = 1024;

interface ShmOptions {
  root: string;
  ringSize: number;
  spinUs: number;
}

function checkOptions(raw: Record<string, unknown>): ShmOptions {
  for (const key of Object.keys(raw)) {
    if (!OPTION_NAMES.has(key)) throw invalidArg(`unknown shm option ${show(key)}; the shm options are ${[...OPTION_NAMES].join(', ')}`);
  }
  let root: string;
  if (raw.dir !== undefined) {
    if (typeof raw.dir !== 'string' || raw.dir === '' || raw.dir.includes('\0')) throw invalidArg('shm.dir must be a non-empty path');
    root = path.resolve(raw.dir);
  } else if (process.env.SHMBUS_DIR) {
    root = path.resolve(process.env.SHMBUS_DIR);
  } else {
    root = path.join(process.env.XDG_RUNTIME_DIR || os.tmpdir(), `shmbus-${process.getuid?.() ?? 0}`);
  }
  const ringSize = raw.ringSize ?? DEFAULT_RING_SIZE;
  if (typeof ringSize !== 'number' || !Number.isInteger(ringSize) || ringSize < 4096 || ringSize > 2 ** 30 || (ringSize & (ringSize - 1)) !== 0) {
    throw invalidArg(`shm.ringSize must be a power of two from 4096 to 2^30 bytes, not ${String(ringSize)}`);
  }
  const spinUs = raw.spinUs ?? DEFAULT_SPIN_US;
  if (typeof spinUs !== 'number' || !Number.isInteger(spinUs) || spinUs < 0 || spinUs > 1_000_000) {
    throw invalidArg(`shm.spinUs must be an integer from 0 (never spin) to 1000000, not ${String(spinUs)}`);
  }
  return { root, ringSize, spinUs };
}

/** Creates `dir` if needed (mode 0700) and refuses it unless it is ours alone. */
function ensurePrivateDir(dir: string, what: string, exactMode: boolean): void {
  let st: fs.Stats | undefined;
  // The last member out of a bus removes its directory: one may go between mkdir and lstat.
  for (let attempt = 0; st === undefined; attempt++) {
    try {
      fs.mkdirSync(dir, { mode: 0o700 });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') {
        throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `can't create the ${what} ${dir}: ${(err as Error).message}`, { cause: err });
      }
    }
    st = fs.lstatSync(dir, { throwIfNoEntry: attempt === 8 });
  }
  const uid = process.getuid?.() ?? 0;
  // What is in the way may be another user's: the fix says to remove it only when it is ours.
  const ours = st.uid === uid;
  const owner = ours ? '' : ` (it belongs to uid ${st.uid}, not ${uid})`;
  const fix = `choose a directory of your own for shm.dir or SHMBUS_DIR${ours ? `; if ${dir} is a leftover of yours, removing it is fine too` : ''}`;
  const refuse = (cause: string): ShmbusError => new ShmbusError('ERR_SHMBUS_TRANSPORT', `the ${what} ${dir} ${cause}; ${fix}`);
  if (st.isSymbolicLink()) throw refuse(`is a symlink${owner}, and shmbus follows none (one could lead into another user's directory)`);
  if (!st.isDirectory()) throw refuse(`is not a directory${owner}`);
  if (!ours) throw refuse(`belongs to uid ${st.uid}, not ${uid}, and shmbus uses only its own user's directories (no other user may see or forge its messages)`);
  const mode = st.mode & 0o777;
  if (exactMode ? mode !== 0o700 : (mode & 0o022) !== 0) {
    const need = exactMode ? `it must be 700 (chmod 700 ${dir})` : 'others may write to it: use a directory of your own (mode 700)';
    throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the ${what} ${dir} has mode ${mode.toString(8)}; ${need}`);
  }
}

/** Open transports, closed on process.exit() so that their socket files go with them. */
const openTransports = new Set<ShmTransport>();
const closeAllAtExit = (): void => {
  for (const t of openTransports) void t.close();
};

/** Bus directories looked at per open(): enough to keep a root tidy, never a long pause. */
const SWEEP_LIMIT = 64;

/**
 * Removes the directories of other buses whose members all died (killed with no survivor to
 * clean up): their socket and lock files, then the directory. A bus with a live member is left
 * alone (its lock is held).
 */
function sweepDeadBuses(addon: NativeAddon, root: string, own: string): void {
  let names: string[];
  try {
    names = fs.readdirSync(root);
  } catch {
    return;
  }
  for (const name of names.slice(0, SWEEP_LIMIT)) if (name !== own) addon.sweep(path.join(root, name));
}

function parseId(name: string): MemberId {
  return /^\d+$/.test(name) ? Number(name) : name;
}

export class ShmTransport implements Transport {
  readonly name = 'shm' as const;
  private readonly ctx: TransportContext;
  private readonly options: ShmOptions;
  private native?: NativeBus;
  /** The kinds of the addon's records (read from it). */
  private events?: NativeEvents;
  private readonly idBySlot = new Map<number, MemberId>();
  /** Keyed by the id itself (a number id and its string are different members' ids). */
  private readonly slotById = new Map<MemberId, number>();
  /** The last pair looked up in each map (cleared when a link comes or goes): frames in a row mostly go to, or come from, one member. */
  private lastTo: MemberId | undefined;
  private lastToSlot = 0;
  private lastFromSlot = -1;
  private lastFrom: MemberId | undefined;
  private readonly reapTimers = new Set<NodeJS.Timeout>();
  private refed = true;
  private closed = false;
  private onReady?: () => void;
  /** The Buffer that FRAME records point into (set by a BATCH record; may span deliver calls). */
  private batch?: Buffer;
  /** Small frames sent and not yet handed to the addon: their bytes, and (slot, offset, length) each. */
  private readonly stage = Buffer.allocUnsafe(STAGE_BYTES);
  private readonly stageMeta = new Int32Array(3 * STAGE_FRAMES);
  private stageBytes = 0;
  private stageFrames = 0;
  private flushQueued = false;
  private readonly flushLater = (): void => {
    this.flushQueued = false;
    this.flush();
  };

  /** The bus directory's name under the root: the bus name, unless a transport built on this one gives another. */
  private readonly dirName: string;
  /**
   * What to do with a member that linked up, by its name: undefined to count it; else it is left
   * out, and an Error is reported. By default a hybrid member's sentinel is refused (shm-sentinel.ts).
   */
  private readonly screen: (name: string) => Error | null | undefined;
  /** Refusals while open() runs, reported once it is done (undefined after). */
  private refusals?: Error[] = [];

  constructor(ctx: TransportContext, dirName = ctx.busName, screen?: (name: string) => Error | null | undefined) {
    this.ctx = ctx;
    this.options = checkOptions(ctx.options ?? {});
    this.dirName = dirName;
    this.screen = screen ?? ((name) => screenForShm(this.dir, ctx.busName, name));
  }

  /** The bus directory this member uses. */
  get dir(): string {
    return path.join(this.options.root, this.dirName);
  }

  async open(): Promise<void> {
    const loaded = loadNative();
    if ('reason' in loaded) throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the shm transport can't run here: ${loaded.reason}`);
    const defaultRoot = this.ctx.options?.dir === undefined && !process.env.SHMBUS_DIR;
    ensurePrivateDir(this.options.root, 'shmbus directory', defaultRoot);
    ensurePrivateDir(this.dir, 'bus directory', true);
    if (this.closed) throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the transport was closed');

    this.events = loaded.addon.events;
    const native = new loaded.addon.Bus(
      {
        dir: this.dir,
        id: String(this.ctx.id),
        ringSize: this.options.ringSize,
        spinUs: this.options.spinUs,
        maxMessageSize: this.ctx.maxMessageSize,
        notifyBytes: Math.max(1, Math.floor(this.ctx.maxQueueBytes / 2)),
      },
      (meta, count, extras) => this.deliver(meta, count, extras),
    );
    const ready = new Promise<void>((resolve) => (this.onReady = resolve));
    const [result, message, pending] = native.start();
    const { STARTED, DUPLICATE_ID } = loaded.addon.startResults;
    if (result === DUPLICATE_ID) {
      native.close();
      throw duplicateId(this.ctx.id, this.ctx.busName, shmHolder(this.dir, String(this.ctx.id)));
    }
    if (result !== STARTED) {
      native.close();
      throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the shm transport can't join bus ${show(this.ctx.busName)} in ${this.dir}: ${message}`);
    }
    this.native = native;
    if (!this.refed) native.unref();
    if (openTransports.size === 0) process.on('exit', closeAllAtExit);
    openTransports.add(this);
    if (pending > 0) {
      // A member that accepted our connection but never answers (stopped, hung) does not hold
      // open() up for ever; if it answers later it joins as any newcomer does.
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([ready, new Promise<void>((resolve) => (timer = setTimeout(resolve, HANDSHAKE_TIMEOUT_MS)))]);
      clearTimeout(timer);
    }
    this.onReady = undefined;
    if (this.closed) throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the transport was closed while opening');
    // On a later turn: after open() has resolved, where the bus's 'error' listeners are.
    const refusals = this.refusals!;
    this.refusals = undefined;
    if (refusals.length > 0) setImmediate(() => refusals.forEach((err) => this.closed || this.ctx.host.error(err)));
    setTimeout(() => sweepDeadBuses(loaded.addon, this.options.root, this.dirName), 0).unref();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.flush();
    this.closed = true;
    for (const t of this.reapTimers) clearTimeout(t);
    this.reapTimers.clear();
    this.native?.close();
    this.native = undefined;
    if (openTransports.delete(this) && openTransports.size === 0) process.off('exit', closeAllAtExit);
    this.idBySlot.clear();
    this.slotById.clear();
    this.forgetLast();
    this.onReady?.();
  }

  peers(): MemberId[] {
    return [...this.idBySlot.values()];
  }

  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void {
    const native = this.native;
    if (native === undefined) throw new ShmbusError('ERR_SHMBUS_CLOSED', 'the shm transport is closed');
    const size = head.length + body.length;
    if (size > STAGE_FRAME_BYTES || targets.length > STAGE_FRAMES) {
      this.flush();
      for (const to of targets) {
        const slot = this.slotById.get(to);
        // A link that went down inside the addon reports DOWN on its next pass; until then its
        // frames have nowhere to go, as with any member that dies after a send.
        if (slot !== undefined) native.send(slot, head, body);
      }
      return;
    }
    if (this.stageBytes + size > STAGE_BYTES || this.stageFrames + targets.length > STAGE_FRAMES) this.flush();
    // One copy for every target: the records point at the same bytes.
    const at = this.stageBytes;
    const meta = this.stageMeta;
    let n = this.stageFrames;
    for (const to of targets) {
      const slot = this.slotOf(to);
      if (slot === undefined) continue;
      meta[3 * n] = slot;
      meta[3 * n + 1] = at;
      meta[3 * n + 2] = size;
      n++;
    }
    if (n === this.stageFrames) return;
    this.stage.set(head, at);
    this.stage.set(body, at + head.length);
    this.stageBytes = at + size;
    this.stageFrames = n;
    if (!this.flushQueued) {
      this.flushQueued = true;
      queueMicrotask(this.flushLater);
    }
  }

  private slotOf(to: MemberId): number | undefined {
    if (to === this.lastTo) return this.lastToSlot;
    const slot = this.slotById.get(to);
    if (slot !== undefined) {
      this.lastTo = to;
      this.lastToSlot = slot;
    }
    return slot;
  }

  /** Hands the batched frames to the addon. */
  private flush(): void {
    if (this.stageFrames === 0) return;
    const frames = this.stageFrames;
    this.stageFrames = 0;
    this.stageBytes = 0;
    this.native?.sendBatch(this.stage, this.stageMeta, frames);
  }

  queuedBytes(to: MemberId): number {
    const slot = this.slotById.get(to);
    if (slot === undefined || this.native === undefined) return 0;
    this.flush();
    return this.native.queued(slot);
  }

  ref(): void {
    this.refed = true;
    this.native?.ref();
  }

  unref(): void {
    this.refed = false;
    this.native?.unref();
  }

  private deliver(meta: Int32Array, count: number, extras: Array<Buffer | string> | undefined): void {
    const host = this.ctx.host;
    const ev = this.events!;
    let thrown: unknown;
    for (let i = 0; i < count && !this.closed; i++) {
      const kind = meta[4 * i];
      const slot = meta[4 * i + 1];
      const a = meta[4 * i + 2];
      const b = meta[4 * i + 3];
      // The host's callbacks are the bus's; should one throw, the rest of the batch still goes
      // through and the first error is rethrown after it, as an uncaught exception.
      try {
        switch (kind) {
          case ev.BATCH:
            this.batch = extras![a] as Buffer;
            break;
          case ev.FRAME: {
            let from = this.lastFrom;
            if (slot !== this.lastFromSlot) {
              from = this.idBySlot.get(slot);
              this.lastFromSlot = slot;
              this.lastFrom = from;
            }
            if (from === undefined) break;
            if (host.frameIn) host.frameIn(from, this.batch!, a, a + b);
            else host.frame(from, this.batch!.subarray(a, a + b));
            break;
          }
          case ev.FRAME_OWN: {
            const from = this.idBySlot.get(slot);
            if (from !== undefined) host.frame(from, extras![a] as Buffer);
            break;
          }
          case ev.UP: {
            const name = extras![a] as string;
            const refused = this.screen(name);
            if (refused !== undefined) {
              // Linked, and never a member: nothing is sent to it, what it sends is dropped.
              if (refused !== null && this.refusals) this.refusals.push(refused);
              else if (refused !== null) host.error(refused);
              break;
            }
            const id = parseId(name);
            this.forgetLast();
            this.idBySlot.set(slot, id);
            this.slotById.set(id, slot);
            host.join(id);
            break;
          }
          case ev.DOWN: {
            const name = extras![a] as string;
            const id = this.idBySlot.get(slot);
            this.forgetLast();
            this.idBySlot.delete(slot);
            if (id !== undefined && this.slotById.get(id) === slot) {
              this.slotById.delete(id);
              host.leave(id);
            }
            this.reap(name, 0);
            break;
          }
          case ev.ERROR:
            host.error(new ShmbusError('ERR_SHMBUS_PROTOCOL', `shm: ${extras![a] as string}`));
            break;
          case ev.READY:
            this.onReady?.();
            break;
          case ev.WRITABLE:
            host.writable();
            break;
        }
      } catch (err) {
        if (thrown === undefined) thrown = err;
      }
    }
    if (thrown !== undefined) throw thrown;
  }

  private forgetLast(): void {
    this.lastTo = this.lastFrom = undefined;
    this.lastFromSlot = -1;
  }

  /** Removes a dead member's socket file once its lock is free (it may lag its sockets). */
  private reap(name: string, attempt: number): void {
    if (this.closed || this.native === undefined || this.slotById.has(parseId(name))) return;
    if (this.native.reap(name) !== -1 || attempt >= REAP_RETRY_MS.length) return;
    const timer = setTimeout(() => {
      this.reapTimers.delete(timer);
      this.reap(name, attempt + 1);
    }, REAP_RETRY_MS[attempt]);
    timer.unref();
    this.reapTimers.add(timer);
  }
}

export function createShmTransport(ctx: TransportContext): Transport {
  return new ShmTransport(ctx);
}
