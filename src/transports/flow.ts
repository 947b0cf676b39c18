/**
 * Flow control for the transports that move frames as messages (process, nats): what the shm
 * rings do by their nature (a frame taken is space freed) these transports do by acknowledgement.
 *
 * Sender side, per target: every frame gets a sequence number in a stream (one stream per target
 * for frames to it alone, one shared by every target for broadcasts sent once), and counts as
 * queued until the target acknowledges that sequence number or a later one. Counting by sequence
 * number, not by bytes, lets a frame that was lost on the way (a NATS slow consumer) stop counting
 * once a later one is acknowledged.
 *
 * Receiver side, per sender: the last sequence number taken in each stream. An acknowledgement
 * rides on the next frame this member sends that sender alone (piggyback(): a message or an
 * answer), so the sender hears of it before that frame is delivered there; when nothing goes back
 * it is sent by itself, on the next turn of the loop past a threshold of bytes, else within
 * ACK_DELAY_MS (so a ping-pong does not cost an acknowledgement per message each way).
 */
import type { MemberId } from './transport';

/** Frames to one target alone. */
export const UNICAST = 0;
/** Frames sent once to every member. */
export const BROADCAST = 1;
export type Stream = typeof UNICAST | typeof BROADCAST;

/** Taken bytes acknowledged on the next turn of the loop (or an eighth of maxQueueBytes, if less). */
const ACK_BYTES = 256 * 1024;
/** How long taken bytes below that wait for a frame to ride on, in ms. */
const ACK_DELAY_MS = 5;

/** An acknowledgement: the last sequence number taken in each stream (undefined: none yet). */
export interface Ack {
  u: number | undefined;
  b: number | undefined;
}

/** a <= b for u32 sequence numbers that wrap. */
function seqLE(a: number, b: number): boolean {
  return ((b - a) >>> 0) < 0x80000000;
}

/** The sequence number after `seq` (0 is never used: it means "none"). */
function nextSeq(seq: number): number {
  return (seq + 1) >>> 0 || 1;
}

/** A u32 from the wire: a sequence number, an epoch. */
export function isU32(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffffffff;
}

/** Sequence numbers and sizes of frames sent and not yet acknowledged, oldest first. */
class SeqQueue {
  private seqs: number[] = [];
  private sizes: number[] = [];
  private head = 0;
  bytes = 0;
  push(seq: number, size: number): void {
    this.seqs.push(seq);
    this.sizes.push(size);
    this.bytes += size;
  }
  get empty(): boolean {
    return this.head === this.seqs.length;
  }
  get lastSeq(): number | undefined {
    return this.empty ? undefined : this.seqs[this.seqs.length - 1];
  }
  /** Drops every entry up to and including `seq`; returns whether any went. */
  ackThrough(seq: number): boolean {
    const start = this.head;
    while (this.head < this.seqs.length && seqLE(this.seqs[this.head], seq)) {
      this.bytes -= this.sizes[this.head];
      this.head++;
    }
    const progress = this.head !== start;
    if (this.head === this.seqs.length) this.clear();
    else if (this.head > 4096 && this.head * 2 > this.seqs.length) {
      this.seqs = this.seqs.slice(this.head);
      this.sizes = this.sizes.slice(this.head);
      this.head = 0;
    }
    return progress;
  }
  clear(): void {
    this.seqs = [];
    this.sizes = [];
    this.head = 0;
    this.bytes = 0;
  }
}

/** Both sides of flow control with one other member. */
class PeerFlow {
  // Sent to it.
  unicastSeq = 0;
  readonly out = [new SeqQueue(), new SeqQueue()];
  /** Since when frames are outstanding with no acknowledgement (0: none outstanding). */
  stalledSince = 0;
  // Taken from it.
  readonly taken: Ack = { u: undefined, b: undefined };
  /** Bytes taken since the last acknowledgement. */
  unacked = 0;
  ackDue = false;

  get queuedBytes(): number {
    return this.out[UNICAST].bytes + this.out[BROADCAST].bytes;
  }
  get idle(): boolean {
    return this.out[UNICAST].empty && this.out[BROADCAST].empty;
  }
  sent(stream: Stream, seq: number, size: number, now: number): void {
    if (this.idle) this.stalledSince = now;
    this.out[stream].push(seq, size);
  }
}

export class FlowControl {
  private readonly peers = new Map<MemberId, PeerFlow>();
  private broadcastSeq = 0;
  private readonly threshold: number;
  private timer?: NodeJS.Timeout;
  private immediate?: NodeJS.Immediate;
  private closed = false;

  /**
   * `sendAck` sends an acknowledgement by itself, when no frame to that member carried it;
   * `writable` is told when a queue went down (the host's writable()).
   */
  constructor(
    maxQueueBytes: number,
    private readonly sendAck: (to: MemberId, ack: Ack) => void,
    private readonly writable: () => void,
  ) {
    this.threshold = Math.max(1, Math.min(ACK_BYTES, Math.floor(maxQueueBytes / 8)));
  }

  private peer(id: MemberId): PeerFlow {
    let p = this.peers.get(id);
    if (!p) this.peers.set(id, (p = new PeerFlow()));
    return p;
  }

  /** `id` left (or is a new incarnation): nothing sent to it counts any more, nothing taken is owed. */
  forget(id: MemberId): void {
    this.peers.delete(id);
  }

  close(): void {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.immediate) clearImmediate(this.immediate);
    this.timer = this.immediate = undefined;
    this.peers.clear();
  }

  // -------------------------------------------------------------------------------------------
  // Sending

  /** A frame of `size` bytes goes to `to` alone: returns its sequence number. */
  sendTo(to: MemberId, size: number, now = Date.now()): number {
    const p = this.peer(to);
    p.unicastSeq = nextSeq(p.unicastSeq);
    p.sent(UNICAST, p.unicastSeq, size, now);
    return p.unicastSeq;
  }

  /** One frame of `size` bytes goes once to every one of `targets`: returns its sequence number. */
  broadcast(targets: Iterable<MemberId>, size: number, now = Date.now()): number {
    this.broadcastSeq = nextSeq(this.broadcastSeq);
    for (const id of targets) this.peer(id).sent(BROADCAST, this.broadcastSeq, size, now);
    return this.broadcastSeq;
  }

  /** `from` acknowledged `ack` (sequence numbers from the wire, checked here). */
  acked(from: MemberId, ack: { u?: unknown; b?: unknown }): void {
    const p = this.peers.get(from);
    if (!p) return;
    let progress = false;
    if (isU32(ack.u)) progress = p.out[UNICAST].ackThrough(ack.u) || progress;
    if (isU32(ack.b)) progress = p.out[BROADCAST].ackThrough(ack.b) || progress;
    if (!progress) return;
    p.stalledSince = p.idle ? 0 : Date.now();
    this.writable();
  }

  /** Bytes sent to `to` and not acknowledged. */
  queuedBytes(to: MemberId): number {
    return this.peers.get(to)?.queuedBytes ?? 0;
  }

  /**
   * Whether frames to `to` have waited more than `after` ms with no acknowledgement (lost on the
   * way, or the target is gone): then the caller tells it sentUpTo() and the clock starts again.
   */
  stalled(to: MemberId, after: number, now = Date.now()): boolean {
    const p = this.peers.get(to);
    if (!p || p.idle || p.stalledSince === 0 || now - p.stalledSince <= after) return false;
    p.stalledSince = now;
    return true;
  }

  /** The last sequence numbers sent to `to` (for a target that may have missed some). */
  sentUpTo(to: MemberId): Ack {
    const p = this.peers.get(to);
    return { u: p?.unicastSeq ?? 0, b: p?.out[BROADCAST].lastSeq };
  }

  // -------------------------------------------------------------------------------------------
  // Receiving

  /**
   * This member took frame `seq` of `stream` from `from` (`bytes` long; 0 for one it dropped).
   * Call it before handing the frame on, so that anything sent in answer carries the
   * acknowledgement. Returns how many frames before it never arrived.
   */
  took(from: MemberId, stream: Stream, seq: number, bytes: number): number {
    const p = this.peer(from);
    const key = stream === BROADCAST ? 'b' : 'u';
    const last = p.taken[key];
    const lost = last !== undefined && !seqLE(seq, last) ? ((seq - last - 1) >>> 0) : 0;
    p.taken[key] = seq;
    p.unacked += bytes;
    this.due(p);
    return lost;
  }

  /**
   * `from` says it sent up to `upTo`: what has not arrived by now never will. Returns how many
   * frames were lost; they are acknowledged, so its queue empties.
   */
  sentThere(from: MemberId, upTo: { u?: unknown; b?: unknown }): number {
    const p = this.peer(from);
    let lost = 0;
    for (const key of ['u', 'b'] as const) {
      const seq = upTo[key];
      if (!isU32(seq) || (key === 'u' && seq === 0)) continue;
      const last = p.taken[key];
      if (last === undefined || !seqLE(seq, last)) {
        if (last !== undefined) lost += (seq - last) >>> 0;
        p.taken[key] = seq;
      }
    }
    this.due(p, true);
    return lost;
  }

  /** The acknowledgement owed to `to`, for a frame to it alone to carry (then none goes by itself). */
  piggyback(to: MemberId): Ack | undefined {
    const p = this.peers.get(to);
    if (!p || !p.ackDue) return undefined;
    p.ackDue = false;
    p.unacked = 0;
    return { ...p.taken };
  }

  private due(p: PeerFlow, now = false): void {
    p.ackDue = true;
    if (this.closed || this.immediate) return;
    if (now || p.unacked >= this.threshold) {
      if (this.timer) clearTimeout(this.timer);
      this.timer = undefined;
      this.immediate = setImmediate(() => this.flush());
    } else if (!this.timer) {
      this.timer = setTimeout(() => this.flush(), ACK_DELAY_MS);
      this.timer.unref();
    }
  }

  private flush(): void {
    this.immediate = this.timer = undefined;
    for (const [id, p] of this.peers) {
      if (!p.ackDue) continue;
      p.ackDue = false;
      p.unacked = 0;
      this.sendAck(id, { ...p.taken });
    }
  }
}
