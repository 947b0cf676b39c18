/**
 * The only thing the bus knows of a transport. A transport joins and leaves a bus, keeps the
 * member list, moves opaque frames between members and says how many bytes it holds for each
 * target. Envelopes, request ids, timeouts, codecs, listeners and the backpressure decision live
 * in the bus (src/bus.ts), once for every transport.
 */

import type { MemberId } from '../ids';

export type { MemberId };

export type TransportName = 'shm' | 'process' | 'nats' | 'hybrid';

/** How a member reaches another: through which transport's links. */
export type LinkName = 'shm' | 'process' | 'nats';

/** The bus's side of a transport: how a transport reports what happens to it. */
export interface TransportHost {
  /**
   * One frame from `from` (never from this member itself). Called only from the transport's own
   * I/O callbacks, never synchronously inside send(). The buffer belongs to the bus from then on.
   * For each sender, frames arrive in the order that sender passed them to send().
   */
  frame(from: MemberId, frame: Buffer): void;
  /**
   * Optional: as frame(), for the frame bytes[start, end) of a buffer that holds other frames
   * too (no Buffer made per frame). The bus keeps only what it hands on (a raw body is a view
   * into bytes), so bytes must never be written again.
   */
  frameIn?(from: MemberId, bytes: Buffer, start: number, end: number): void;
  /** `id` became a member. Reported before any frame from it. Not reported during open() for
   *  the members already present: those are in peers() once open() resolves. */
  join(id: MemberId): void;
  /** `id` left or died. No frame from it follows (until it joins again). */
  leave(id: MemberId): void;
  /** Something went wrong that the application should hear about; the bus goes on. */
  error(err: Error): void;
  /** Queued bytes for some target went down: drain() and blocked senders look again. */
  writable(): void;
}

/** What every transport is given when it is made. */
export interface TransportContext {
  readonly busName: string;
  readonly id: MemberId;
  readonly host: TransportHost;
  readonly maxMessageSize: number;
  readonly maxQueueBytes: number;
  /** The transport's own section of the open() options (`shm`, `process`, `nats`; for hybrid
   *  `{ shm, nats }`), unvalidated. */
  readonly options: Record<string, unknown>;
}

export interface PeerTransportStats {
  /** Bytes handed to this member and not yet taken by it. */
  queuedBytes: number;
}

export interface Transport {
  readonly name: TransportName;

  /**
   * Join the bus. Resolves once this member can be reached and is connected to every member
   * already present. Rejects with a ShmbusError (ERR_SHMBUS_DUPLICATE_ID when a live member holds
   * this id, ERR_SHMBUS_TRANSPORT when the transport can't work here).
   */
  open(): Promise<void>;

  /** Leave the bus and free everything. Idempotent. After it, no host callback is made. */
  close(): Promise<void>;

  /** The other live members (self excluded), in any order. */
  peers(): MemberId[];

  /**
   * Hand one frame to each of `targets`: live members, never this member itself, no repeats (the
   * bus checks all that and the queue limits before calling). A frame is `head` followed by
   * `body`; the receiver gets them joined as one buffer. Never calls back into the host
   * synchronously. Throws a ShmbusError only if it can't accept the frame at all, and then has
   * sent it to none of the targets.
   */
  send(targets: readonly MemberId[], head: Uint8Array, body: Uint8Array): void;

  /** Bytes accepted for `to` and not yet taken by it (0 for a non-member). */
  queuedBytes(to: MemberId): number;

  /** Optional: how this member reaches member `to`, undefined if it is not a member (without it: the transport's own name). */
  via?(to: MemberId): LinkName | undefined;

  /**
   * Optional: the bus now has `count` requests to member `to` waiting for an answer. Called when
   * that changes, before the frame of a new request is sent. A transport that sees a member die
   * only by asking (nats) asks after the targets of pending requests while there are any.
   */
  pendingRequests?(to: MemberId, count: number): void;

  /** Whether the transport keeps the event loop alive (it does after open() until unref()). */
  ref(): void;
  unref(): void;
}

export type TransportFactory = (ctx: TransportContext) => Transport;
