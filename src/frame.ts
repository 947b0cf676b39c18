/**
 * The bus envelope: what the bus puts in front of every encoded body before a transport moves it.
 *
 *   offset 0  u8   kind        FrameKind
 *   offset 1  u8   flags       FLAG_* bits
 *   offset 2  u16  actionLen   bytes of the UTF-8 action that follows the fixed part
 *   offset 4  u32  requestId   for REQUEST, REPLY and FAILURE; 0 otherwise
 *   offset 8  ...  action, then the body (codec-encoded; JSON {message, code} for FAILURE)
 *
 * Little-endian. Frames come from other processes: parseFrame checks every field and returns
 * null for a frame it can't trust.
 */

export const enum FrameKind {
  MESSAGE = 1,
  REQUEST = 2,
  REPLY = 3,
  FAILURE = 4,
}

/** The body is `undefined` (the json codec has no encoding for it). */
export const FLAG_UNDEFINED = 1;

export const HEAD_FIXED = 8;
export const MAX_ACTION_CHARS = 256;

export interface ParsedFrame {
  kind: FrameKind;
  flags: number;
  requestId: number;
  action: string;
  /** The body is bytes[bodyStart, bodyEnd) (bytes may hold other frames too). */
  bytes: Buffer;
  bodyStart: number;
  bodyEnd: number;
}

export function makeHead(kind: FrameKind, flags: number, requestId: number, action: string): Buffer {
  const actionLen = Buffer.byteLength(action, 'utf8');
  const head = Buffer.allocUnsafe(HEAD_FIXED + actionLen);
  head[0] = kind;
  head[1] = flags;
  head.writeUInt16LE(actionLen, 2);
  head.writeUInt32LE(requestId >>> 0, 4);
  head.write(action, HEAD_FIXED, 'utf8');
  return head;
}

/** The last action read, and its bytes: frames in a row mostly carry the same action. */
const ACTION_CACHE_BYTES = 64;
let lastActionBytes: Buffer | undefined;
let lastAction = '';

/** The action in bytes[start, end), without decoding UTF-8 when its bytes are the last one's. */
function readAction(bytes: Buffer, start: number, end: number): string {
  const length = end - start;
  const last = lastActionBytes;
  if (last !== undefined && last.length === length) {
    let i = 0;
    while (i < length && bytes[start + i] === last[i]) i++;
    if (i === length) return lastAction;
  }
  const action = bytes.toString('utf8', start, end);
  if (length <= ACTION_CACHE_BYTES) {
    lastActionBytes = Buffer.from(bytes.subarray(start, end));
    lastAction = action;
  }
  return action;
}

/** The frame bytes[start, end) (the whole of bytes by default), or null if it can't be trusted. */
export function parseFrame(bytes: Buffer, start = 0, end = bytes.length): ParsedFrame | null {
  if (end - start < HEAD_FIXED) return null;
  const kind = bytes[start];
  if (kind < FrameKind.MESSAGE || kind > FrameKind.FAILURE) return null;
  const actionLen = bytes[start + 2] | (bytes[start + 3] << 8);
  const bodyStart = start + HEAD_FIXED + actionLen;
  if (bodyStart > end) return null;
  return {
    kind,
    flags: bytes[start + 1],
    requestId: (bytes[start + 4] | (bytes[start + 5] << 8) | (bytes[start + 6] << 16)) + bytes[start + 7] * 2 ** 24,
    action: readAction(bytes, start + HEAD_FIXED, bodyStart),
    bytes,
    bodyStart,
    bodyEnd: end,
  };
}
