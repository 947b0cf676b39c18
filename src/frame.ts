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
  body: Buffer;
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

/** The action in frame[HEAD_FIXED, end), without decoding UTF-8 when its bytes are the last one's. */
function readAction(frame: Buffer, end: number): string {
  const length = end - HEAD_FIXED;
  const last = lastActionBytes;
  if (last !== undefined && last.length === length) {
    let i = 0;
    while (i < length && frame[HEAD_FIXED + i] === last[i]) i++;
    if (i === length) return lastAction;
  }
  const action = frame.toString('utf8', HEAD_FIXED, end);
  if (length <= ACTION_CACHE_BYTES) {
    lastActionBytes = Buffer.from(frame.subarray(HEAD_FIXED, end));
    lastAction = action;
  }
  return action;
}

export function parseFrame(frame: Buffer): ParsedFrame | null {
  if (frame.length < HEAD_FIXED) return null;
  const kind = frame[0];
  if (kind < FrameKind.MESSAGE || kind > FrameKind.FAILURE) return null;
  const actionLen = frame.readUInt16LE(2);
  const bodyStart = HEAD_FIXED + actionLen;
  if (bodyStart > frame.length) return null;
  return {
    kind,
    flags: frame[1],
    requestId: frame.readUInt32LE(4),
    action: readAction(frame, bodyStart),
    body: frame.subarray(bodyStart),
  };
}
