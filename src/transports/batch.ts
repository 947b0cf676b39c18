/**
 * Batches: the frames written to one target in one turn of the loop, sent together as one
 * message of the transport (one child.send, one NATS publish) instead of one each, since a
 * message costs more than the small frames in it. In a batch every frame is u32 length, u32
 * sequence number (flow.ts), then the frame.
 */

/** A batch this large goes at once, without waiting for the end of the turn. */
export const BATCH_BYTES = 16 * 1024;
/** The size of the buffers batches are written in (a larger frame gets one of its own). */
const SLAB_BYTES = 64 * 1024;
const RECORD_HEAD = 8;

/** Where one target's batch is written: bytes [start, end) of a slab that later batches go on filling. */
interface Lane {
  slab: Buffer;
  start: number;
  end: number;
}

/**
 * Frames waiting, per target, for the end of this turn of the loop (a microtask: whatever the
 * code running now sends goes together), then handed to `post` as one batch per target. Frames
 * are copied in at once (the data was encoded at the call; the caller may change it next), into
 * slabs of SLAB_BYTES that successive batches share, as Buffer's own pool does: a batch costs no
 * allocation of its own, and no byte is copied twice. With a `headroom`, every batch handed to
 * `post` begins with that many bytes left for the poster to write a header of its own in, so that
 * the message it sends needs no copy either.
 */
export class Batcher<K> {
  private readonly lanes = new Map<K, Lane>();
  private readonly pending = new Set<K>();
  private scheduled = false;
  private readonly flushAll = (): void => {
    this.scheduled = false;
    for (const to of this.pending) this.flushOne(to);
  };

  constructor(
    private readonly post: (to: K, batch: Buffer) => void,
    private readonly headroom = 0,
  ) {}

  add(to: K, seq: number, head: Uint8Array, body: Uint8Array): void {
    let lane = this.lanes.get(to);
    // The first frame of a batch comes after the batch's headroom.
    const room = lane === undefined || lane.end === lane.start ? this.headroom : 0;
    const need = RECORD_HEAD + head.length + body.length;
    if (!lane || lane.end + room + need > lane.slab.length) {
      // A new slab; the part of this batch already written moves with it.
      const slab = Buffer.allocUnsafe(Math.max(SLAB_BYTES, room + need + (lane ? lane.end - lane.start : 0)));
      const kept = lane ? lane.slab.copy(slab, 0, lane.start, lane.end) : 0;
      this.lanes.set(to, (lane = { slab, start: 0, end: kept }));
    }
    lane.end += room;
    const { slab } = lane;
    let at = lane.end;
    slab.writeUInt32LE(head.length + body.length, at);
    slab.writeUInt32LE(seq, at + 4);
    slab.set(head, (at += RECORD_HEAD));
    slab.set(body, at + head.length);
    lane.end += need;
    this.pending.add(to);
    if (lane.end - lane.start >= BATCH_BYTES) this.flushOne(to);
    else if (!this.scheduled) {
      this.scheduled = true;
      queueMicrotask(this.flushAll);
    }
  }

  /** Whether frames for `to` are waiting. */
  waiting(to: K): boolean {
    return this.pending.has(to);
  }

  /** How many targets have frames waiting. */
  get targets(): number {
    return this.pending.size;
  }

  /** Sends everything waiting now (before something that must not overtake it). */
  flush(): void {
    this.flushAll();
  }

  /** `to` is gone: what waits for it is dropped. */
  drop(to: K): void {
    this.pending.delete(to);
    this.lanes.delete(to);
  }

  private flushOne(to: K): void {
    this.pending.delete(to);
    const lane = this.lanes.get(to);
    if (!lane || lane.end === lane.start) return;
    const batch = lane.slab.subarray(lane.start, lane.end);
    lane.start = lane.end;
    this.post(to, batch);
  }
}

/** Calls `take` for each frame of `batch` in order; false if it ends in the middle of one. */
export function readBatch(batch: Buffer, take: (seq: number, frame: Buffer) => void): boolean {
  let at = 0;
  while (at + RECORD_HEAD <= batch.length) {
    const end = at + RECORD_HEAD + batch.readUInt32LE(at);
    if (end > batch.length) return false;
    take(batch.readUInt32LE(at + 4), batch.subarray(at + RECORD_HEAD, end));
    at = end;
  }
  return at === batch.length;
}
