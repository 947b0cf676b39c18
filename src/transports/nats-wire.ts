/**
 * The nats transport's wire format: its subjects, the binary frames on the data subjects (a
 * header, then the payload; frames over the server's max_payload as chunks, joined back here),
 * and the JSON control messages. Pure code over bytes: no connection, no membership, no timers.
 *
 * Subjects, under `<prefix>.<bus>` (the bus name and member ids escaped into single tokens):
 *
 *   .p              presence: query / hello / hb (heartbeat) / bye
 *   .a              frames to every member (one publish for a broadcast)
 *   .m.<member>     frames to one member, and control messages to it (claim, ack, sync)
 *   .x.<instance>.> one connection's own inbox: .c answers to its claim, .h answers to its
 *                   query, .n.<member>.<epoch> the server's "no responders" statuses for what
 *                   it sent to a member that is gone
 *
 * A frame: kind u8, stream u8, fromLen u8, flags u8, epoch u32, seq u32 (all LE); a FIRST chunk
 * adds the frame's total length u32; with ACK_UNICAST or ACK_BROADCAST in flags an
 * acknowledgement follows: the target's epoch u32, unicast u32, broadcast u32; then the sender's
 * id token (fromLen bytes), then the payload. Control messages are JSON objects (first byte '{'),
 * with short keys: t (kind) and the kind's fields, and every one the sender's id, e (epoch), i
 * (instance) and h (heartbeat interval). The presence kinds (query, here, hello, hb) also carry
 * x, the transport the sender is on when it is not plain nats (one built on it: hybrid), and the
 * fields that transport adds, under keys of its own.
 */
import { isMemberId } from '../ids';
import { BROADCAST, UNICAST, isU32, type Ack, type Stream } from './flow';
import type { MemberId } from './transport';

// ---------------------------------------------------------------------------------------------
// Subjects and tokens

/** A name as one subject token: anything but letters, digits and '-' becomes _XX (hex). */
export function escapeToken(text: string): string {
  return text.replace(/[^A-Za-z0-9-]/g, (c) => `_${c.charCodeAt(0).toString(16).padStart(2, '0')}`);
}

/** A member id as one subject token, also the sender field of frames: n<digits> or s<escaped>. */
export function idToken(id: MemberId): string {
  return typeof id === 'number' ? `n${id}` : `s${escapeToken(id)}`;
}

/** The member id of a token, or undefined when it is not one idToken() makes. */
export function tokenId(token: string): MemberId | undefined {
  let id: MemberId;
  if (token.startsWith('n') && /^n\d{1,10}$/.test(token)) id = Number(token.slice(1));
  else if (token.startsWith('s')) id = token.slice(1).replace(/_([0-9a-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  else return undefined;
  return isMemberId(id) && idToken(id) === token ? id : undefined;
}

/** tokenId() for the tokens that keep coming (every frame names its sender). */
export class TokenIds {
  private readonly ids = new Map<string, MemberId | undefined>();
  get(token: string): MemberId | undefined {
    if (this.ids.has(token)) return this.ids.get(token);
    const id = tokenId(token);
    if (this.ids.size > 10_000) this.ids.clear();
    this.ids.set(token, id);
    return id;
  }
}

/** The subjects of one bus, as one connection (`instance`) uses them. */
export class Subjects {
  readonly presence: string;
  readonly all: string;
  readonly inbox: string;
  /** Where the claim's answers come. */
  readonly claimAnswers: string;
  /** Where the query's answers come. */
  readonly queryAnswers: string;
  private readonly root: string;

  constructor(prefix: string, busName: string, instance: string) {
    this.root = `${prefix}.${escapeToken(busName)}`;
    this.presence = `${this.root}.p`;
    this.all = `${this.root}.a`;
    this.inbox = `${this.root}.x.${instance}`;
    this.claimAnswers = `${this.inbox}.c`;
    this.queryAnswers = `${this.inbox}.h`;
  }

  member(token: string): string {
    return `${this.root}.m.${token}`;
  }

  /** The reply subject of what goes to a member: "no responders" comes back there if it is gone. */
  noResponders(token: string, epoch: number): string {
    return `${this.inbox}.n.${token}.${epoch}`;
  }

  /** What an inbox subject is for. */
  inboxPart(subject: string): { claim: true } | { query: true } | { gone: { token: string; epoch: string } } | undefined {
    const rest = subject.slice(this.inbox.length + 1);
    if (rest === 'c') return { claim: true };
    if (rest === 'h') return { query: true };
    if (!rest.startsWith('n.')) return undefined;
    const [, token, epoch] = rest.split('.');
    return token && epoch ? { gone: { token, epoch } } : undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Frames

/** The kinds of message on the data subjects (the first byte). */
export const FrameKind = {
  /** A frame in one message. */
  WHOLE: 1,
  /** The first chunk of a frame over max_payload; MORE chunks follow, then the LAST. */
  FIRST: 2,
  MORE: 3,
  LAST: 4,
  /** Small frames written in one turn, together (batch.ts). */
  BATCH: 5,
} as const;
export type FrameKind = (typeof FrameKind)[keyof typeof FrameKind];

/** The first byte of a JSON control message on a data subject. */
const JSON_START = 0x7b;
const FIXED = 12;
const ACK_UNICAST = 1;
const ACK_BROADCAST = 2;
const ACK_BLOCK = 12;
/** Room left in every message under max_payload. */
const PAYLOAD_MARGIN = 64;

/** An acknowledgement riding on a frame: it counts only for the target's incarnation `epoch`. */
export interface FrameAck extends Ack {
  epoch: number;
}

/** A frame as it came off the wire. */
export interface WireFrame {
  kind: FrameKind;
  stream: Stream;
  /** The sender's incarnation. */
  epoch: number;
  seq: number;
  /** FIRST: the length of the whole frame. */
  total: number;
  ack: FrameAck | undefined;
  /** The sender's id token. */
  from: string;
  payload: Buffer;
}

/** Whether a message on a data subject is a control message (JSON) rather than a frame. */
export function isControl(data: Uint8Array): boolean {
  return data.length > 0 && data[0] === JSON_START;
}

/** The frame in `data`, or undefined if it is not one. */
export function readFrame(d: Uint8Array): WireFrame | undefined {
  const kind = d[0];
  if (kind < FrameKind.WHOLE || kind > FrameKind.BATCH || d.length < FIXED) return undefined;
  const data = Buffer.from(d.buffer, d.byteOffset, d.byteLength);
  const stream = data[1];
  if (stream !== UNICAST && stream !== BROADCAST) return undefined;
  const fromLen = data[2];
  const ackFlags = data[3] & (ACK_UNICAST | ACK_BROADCAST);
  let at = FIXED;
  let total = 0;
  if (kind === FrameKind.FIRST) {
    if (data.length < FIXED + 4) return undefined;
    total = data.readUInt32LE(FIXED);
    at += 4;
  }
  let ack: FrameAck | undefined;
  if (ackFlags !== 0) {
    if (data.length < at + ACK_BLOCK) return undefined;
    ack = {
      epoch: data.readUInt32LE(at),
      u: ackFlags & ACK_UNICAST ? data.readUInt32LE(at + 4) : undefined,
      b: ackFlags & ACK_BROADCAST ? data.readUInt32LE(at + 8) : undefined,
    };
    at += ACK_BLOCK;
  }
  if (data.length < at + fromLen) return undefined;
  return {
    kind: kind as FrameKind,
    stream,
    epoch: data.readUInt32LE(4),
    seq: data.readUInt32LE(8),
    total,
    ack,
    from: data.toString('latin1', at, at + fromLen),
    payload: data.subarray(at + fromLen),
  };
}

/** Writes the frames of one sender (its id token and incarnation). */
export class FrameWriter {
  private readonly from: Buffer;

  constructor(token: string, private readonly epoch: number) {
    this.from = Buffer.from(token, 'latin1');
    if (this.from.length > 255) throw new RangeError('the id token is over 255 bytes');
  }

  /** The bytes a batch (batch.ts) leaves before its frames for this header: the Batcher's headroom. */
  get batchHeadroom(): number {
    return FIXED + ACK_BLOCK + this.from.length;
  }

  /**
   * A batch as one message: `batch` begins with batchHeadroom bytes, and the header is written in
   * them (no copy of the frames).
   */
  batch(stream: Stream, batch: Buffer, ack: FrameAck | undefined): Buffer {
    const hdr = FIXED + (ack ? ACK_BLOCK : 0) + this.from.length;
    const buf = batch.subarray(this.batchHeadroom - hdr);
    this.fixed(buf, FrameKind.BATCH, stream, 0, FIXED, ack);
    this.from.copy(buf, hdr - this.from.length);
    return buf;
  }

  /**
   * One frame, head then body, as one message or as chunks under `maxPayload`, handed to `emit`
   * in order (`first` for the first); `ack` rides on the first.
   */
  frame(stream: Stream, seq: number, head: Uint8Array, body: Uint8Array, maxPayload: number, ack: FrameAck | undefined, emit: (message: Buffer, first: boolean) => void): void {
    const from = this.from;
    const size = head.length + body.length;
    const ackLen = ack ? ACK_BLOCK : 0;
    const wholeLen = FIXED + ackLen + from.length + size;
    if (wholeLen <= maxPayload - PAYLOAD_MARGIN) {
      const buf = Buffer.allocUnsafe(wholeLen);
      this.fixed(buf, FrameKind.WHOLE, stream, seq, FIXED, ack);
      let at = FIXED + ackLen + from.copy(buf, FIXED + ackLen);
      buf.set(head, at);
      at += head.length;
      buf.set(body, at);
      emit(buf, true);
      return;
    }
    const room = maxPayload - PAYLOAD_MARGIN - (FIXED + 4 + ACK_BLOCK + from.length);
    if (room < 1024) throw new RangeError(`the NATS server's max_payload (${maxPayload}) is too small`);
    // Chunk i covers bytes [i*room, (i+1)*room) of head+body, without joining them first.
    let offset = 0;
    let first = true;
    while (offset < size) {
      const n = Math.min(room, size - offset);
      const last = offset + n === size;
      const kind = first ? FrameKind.FIRST : last ? FrameKind.LAST : FrameKind.MORE;
      const hdr = FIXED + (first ? 4 + ackLen : 0) + from.length;
      const buf = Buffer.allocUnsafe(hdr + n);
      this.fixed(buf, kind, stream, seq, FIXED + 4, first ? ack : undefined);
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
      emit(buf, first);
      offset = end;
      first = false;
    }
  }

  /** The fixed part, and at `ackAt` the acknowledgement if there is one. */
  private fixed(buf: Buffer, kind: FrameKind, stream: Stream, seq: number, ackAt: number, ack: FrameAck | undefined): void {
    buf[0] = kind;
    buf[1] = stream;
    buf[2] = this.from.length;
    buf[3] = ack ? (ack.u !== undefined ? ACK_UNICAST : 0) | (ack.b !== undefined ? ACK_BROADCAST : 0) : 0;
    buf.writeUInt32LE(this.epoch, 4);
    buf.writeUInt32LE(seq, 8);
    if (!ack) return;
    buf.writeUInt32LE(ack.epoch, ackAt);
    buf.writeUInt32LE(ack.u ?? 0, ackAt + 4);
    buf.writeUInt32LE(ack.b ?? 0, ackAt + 8);
  }
}

/** A chunked frame being joined. */
interface Partial {
  stream: Stream;
  seq: number;
  buf: Buffer;
  filled: number;
}

/** What a chunk made of its frame: the whole frame, or why not. */
export type Joined = Buffer | 'more' | 'beginning lost' | 'wrong length';

/** The chunked frames being joined, one per sender at most (a sender's frames come in order). */
export class ChunkJoiner {
  private readonly partials = new Map<MemberId, Partial>();

  /** A FIRST chunk from `from`: the start of a frame of `frame.total` bytes. */
  begin(from: MemberId, frame: WireFrame): void {
    if (frame.payload.length > frame.total) return;
    const buf = Buffer.allocUnsafe(frame.total);
    frame.payload.copy(buf, 0);
    this.partials.set(from, { stream: frame.stream, seq: frame.seq, buf, filled: frame.payload.length });
  }

  /** A MORE or LAST chunk from `from`. */
  add(from: MemberId, frame: WireFrame): Joined {
    const partial = this.partials.get(from);
    const { payload } = frame;
    if (!partial || partial.stream !== frame.stream || partial.seq !== frame.seq || partial.filled + payload.length > partial.buf.length) {
      // Nothing of this frame is delivered.
      if (partial) this.partials.delete(from);
      return 'beginning lost';
    }
    payload.copy(partial.buf, partial.filled);
    partial.filled += payload.length;
    if (frame.kind === FrameKind.MORE) return 'more';
    this.partials.delete(from);
    return partial.filled === partial.buf.length ? partial.buf : 'wrong length';
  }

  /** Drops what is being joined from `from` (it began a new frame, left, or says it was lost): whether there was any. */
  drop(from: MemberId): boolean {
    return this.partials.size > 0 && this.partials.delete(from);
  }
}

// ---------------------------------------------------------------------------------------------
// Control messages

/** What a member says of itself in each of its presence messages (query, here, hello, heartbeat). */
export interface Said {
  /** The transport it is on: 'nats', or one built on it ('hybrid'). On the wire: x, absent for 'nats'. */
  flavor: string;
  /** The fields that transport adds (on the wire under their own keys, none of the keys above). */
  extra: Record<string, unknown>;
}

/** Control messages, by kind. */
export type Control =
  /** Who is here? (a member joining, or one back after a reconnect: `rejoin`) Answers go to `replyTo`. */
  | ({ kind: 'query'; replyTo: string; rejoin: boolean } & Said)
  /** An answer to a query: a member, or a process still joining. */
  | ({ kind: 'here'; member: boolean } & Said)
  | ({ kind: 'hello' } & Said)
  | ({ kind: 'heartbeat' } & Said)
  | { kind: 'bye' }
  /** A process wants this id (on the id's member subject, with `replyTo` as its reply subject). */
  | { kind: 'claim'; replyTo: string }
  /** Answers to a claim: a member holds the id; a process is joining under it. */
  | { kind: 'taken' }
  | { kind: 'joining' }
  /** The last sequence numbers taken from the target's incarnation `targetEpoch`. */
  | { kind: 'ack'; targetEpoch: number; unicast: number | undefined; broadcast: number | undefined }
  /** The last sequence numbers sent to the target: what has not arrived never will. */
  | { kind: 'sync'; unicast: number | undefined; broadcast: number | undefined };

/** Who sent a control message. */
export interface ControlSender {
  id: MemberId;
  /** Its incarnation. */
  epoch: number;
  /** Its connection's instance (ties between processes opening one id are broken by it). */
  instance: string | undefined;
  /** Its heartbeat interval in ms. */
  heartbeatInterval: number | undefined;
}

export interface ReceivedControl {
  message: Control;
  sender: ControlSender;
}

const KIND_TO_WIRE = { query: 'query', here: 'here', hello: 'hello', heartbeat: 'hb', bye: 'bye', claim: 'claim', taken: 'taken', joining: 'joining', ack: 'ack', sync: 'sync' } as const;
/** The keys of this format: a field a transport built on nats adds to presence uses none of them. */
const WIRE_KEYS = new Set(['t', 'r', 'm', 's', 'te', 'u', 'b', 'x', 'id', 'e', 'i', 'h']);
const TE = new TextEncoder();

/** The wire fields of what a member says of itself. */
function writeSaid(wire: Record<string, unknown>, said: Said): void {
  for (const [key, value] of Object.entries(said.extra)) {
    if (WIRE_KEYS.has(key)) throw new RangeError(`presence field ${key} is one of the nats transport's own`);
    wire[key] = value;
  }
  if (said.flavor !== 'nats') wire.x = said.flavor;
}

/** What a member says of itself, from the wire fields. */
function readSaid(w: Record<string, unknown>): Said {
  const extra: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(w)) if (!WIRE_KEYS.has(key)) extra[key] = value;
  return { flavor: typeof w.x === 'string' ? w.x : 'nats', extra };
}

export function encodeControl(message: Control, sender: ControlSender): Uint8Array {
  const wire: Record<string, unknown> = { t: KIND_TO_WIRE[message.kind] };
  switch (message.kind) {
    case 'query':
      wire.r = message.replyTo;
      if (message.rejoin) wire.m = 1;
      writeSaid(wire, message);
      break;
    case 'here':
      wire.s = message.member ? 'm' : 'j';
      writeSaid(wire, message);
      break;
    case 'hello':
    case 'heartbeat':
      writeSaid(wire, message);
      break;
    case 'claim':
      wire.r = message.replyTo;
      break;
    case 'ack':
      wire.te = message.targetEpoch;
      wire.u = message.unicast;
      wire.b = message.broadcast;
      break;
    case 'sync':
      wire.u = message.unicast;
      wire.b = message.broadcast;
      break;
  }
  wire.id = sender.id;
  wire.e = sender.epoch;
  wire.i = sender.instance;
  wire.h = sender.heartbeatInterval;
  return TE.encode(JSON.stringify(wire));
}

const u32 = (v: unknown): number | undefined => (isU32(v) ? v : undefined);

/** The control message in `data`, or undefined if it is not one this version reads. */
export function decodeControl(data: Uint8Array): ReceivedControl | undefined {
  if (!isControl(data)) return undefined;
  let w: Record<string, unknown>;
  try {
    w = JSON.parse(Buffer.from(data.buffer, data.byteOffset, data.byteLength).toString('utf8'));
  } catch {
    return undefined;
  }
  if (w === null || typeof w !== 'object' || !isMemberId(w.id) || !isU32(w.e)) return undefined;
  let message: Control;
  switch (w.t) {
    case 'query':
      if (typeof w.r !== 'string') return undefined;
      message = { kind: 'query', replyTo: w.r, rejoin: w.m === 1, ...readSaid(w) };
      break;
    case 'here':
      message = { kind: 'here', member: w.s === 'm', ...readSaid(w) };
      break;
    case 'hello':
      message = { kind: 'hello', ...readSaid(w) };
      break;
    case 'hb':
      message = { kind: 'heartbeat', ...readSaid(w) };
      break;
    case 'bye':
    case 'taken':
    case 'joining':
      message = { kind: w.t };
      break;
    case 'claim':
      message = { kind: 'claim', replyTo: typeof w.r === 'string' ? w.r : '' };
      break;
    case 'ack':
      if (!isU32(w.te)) return undefined;
      message = { kind: 'ack', targetEpoch: w.te, unicast: u32(w.u), broadcast: u32(w.b) };
      break;
    case 'sync':
      message = { kind: 'sync', unicast: u32(w.u), broadcast: u32(w.b) };
      break;
    default:
      return undefined;
  }
  const h = w.h;
  return {
    message,
    sender: {
      id: w.id,
      epoch: w.e,
      instance: typeof w.i === 'string' ? w.i : undefined,
      heartbeatInterval: typeof h === 'number' && h > 0 && h <= 600_000 ? h : undefined,
    },
  };
}
