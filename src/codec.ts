import * as v8 from 'node:v8';
import { ShmbusError } from './errors';
import { FLAG_UNDEFINED } from './frame';

export type CodecName = 'v8' | 'json' | 'raw';

export interface Encoded {
  body: Uint8Array;
  flags: number;
}

/** Turns data into bytes and back. Encoding errors are ShmbusError('ERR_SHMBUS_SERIALIZE'). */
export interface Codec {
  readonly name: CodecName;
  encode(data: unknown): Encoded;
  /** The body is bytes[start, end), from another process: a codec that can't decode it throws. */
  decode(bytes: Buffer, start: number, end: number, flags: number): unknown;
}

const EMPTY = new Uint8Array(0);

function serializeError(codec: CodecName, err: unknown): ShmbusError {
  const reason = err instanceof Error ? err.message : String(err);
  return new ShmbusError('ERR_SHMBUS_SERIALIZE', `data can't be encoded with the ${codec} codec: ${reason}`, { cause: err });
}

/**
 * v8.serialize() makes and drops a native Serializer per call, which costs more than the
 * serializing itself for a small value (about 3 µs of mostly GC work for a 64-byte string). A
 * value with no objects in it (a string, number, bigint, boolean, null or undefined) can't touch
 * a serializer's object-identity map, so one serializer serves them all; the bytes are those
 * v8.serialize() writes. Objects still get a serializer of their own.
 */
let primitiveSerializer: v8.Serializer | undefined;

function serializePrimitive(data: unknown): Buffer {
  // Made at first use, not at import: a runtime without v8.Serializer (Bun) can still import shmbus.
  primitiveSerializer ??= new v8.DefaultSerializer();
  primitiveSerializer.writeHeader();
  primitiveSerializer.writeValue(data);
  return primitiveSerializer.releaseBuffer();
}

/** The format version this Node writes (the second byte of every v8.serialize() result), at first use. */
let v8Version: number | undefined;
const v8FormatVersion = (): number => (v8Version ??= v8.serialize('')[1]);
/** The tag of a one-byte (Latin-1) string in the v8 format, followed by its varint length. */
const ONE_BYTE_STRING = 0x22;

/**
 * Reads bytes[start, end) if it is exactly one Latin-1 string written by this Node's serializer
 * (the most common small payload besides objects), without making a native Deserializer; else
 * undefined.
 */
function deserializeOneByteString(bytes: Buffer, start: number, end: number): string | undefined {
  if (end - start < 4 || bytes[start] !== 0xff || bytes[start + 1] !== v8FormatVersion() || bytes[start + 2] !== ONE_BYTE_STRING) return undefined;
  let length = 0;
  let shift = 0;
  let at = start + 3;
  for (;;) {
    if (at >= end || shift > 28) return undefined;
    const byte = bytes[at++];
    length += (byte & 0x7f) * 2 ** shift;
    if (byte < 0x80) break;
    shift += 7;
  }
  return at + length === end ? bytes.toString('latin1', at, end) : undefined;
}

/** bytes[start, end) as a Buffer of its own length (bytes itself when that is all of it). */
const slice = (bytes: Buffer, start: number, end: number): Buffer => (start === 0 && end === bytes.length ? bytes : bytes.subarray(start, end));

/** Finds a character above U+00FF (V8 answers at once for a string it holds as one-byte). */
const NOT_LATIN1 = /[^\x00-\xff]/;

/** A Latin-1 string in the v8 format (header, one-byte string tag, varint length, bytes), built in JS. */
function serializeLatin1(text: string): Buffer {
  const length = text.length;
  let head = 4;
  for (let n = length; n >= 0x80; n = Math.floor(n / 128)) head++;
  const body = Buffer.allocUnsafe(head + length);
  body[0] = 0xff;
  body[1] = v8FormatVersion();
  body[2] = ONE_BYTE_STRING;
  let at = 3;
  let n = length;
  while (n >= 0x80) {
    body[at++] = (n & 0x7f) | 0x80;
    n = Math.floor(n / 128);
  }
  body[at] = n;
  body.write(text, head, 'latin1');
  return body;
}

const v8Codec: Codec = {
  name: 'v8',
  encode(data) {
    const type = typeof data;
    if (type === 'string' && !NOT_LATIN1.test(data as string)) return { body: serializeLatin1(data as string), flags: 0 };
    if (data === null || (type !== 'object' && type !== 'function' && type !== 'symbol')) {
      return { body: serializePrimitive(data), flags: 0 };
    }
    try {
      return { body: v8.serialize(data), flags: 0 };
    } catch (err) {
      throw serializeError('v8', err);
    }
  },
  decode(bytes, start, end) {
    return deserializeOneByteString(bytes, start, end) ?? v8.deserialize(slice(bytes, start, end));
  },
};

const jsonCodec: Codec = {
  name: 'json',
  encode(data) {
    let text: string | undefined;
    try {
      text = JSON.stringify(data);
    } catch (err) {
      throw serializeError('json', err);
    }
    if (text === undefined) {
      if (data === undefined) return { body: EMPTY, flags: FLAG_UNDEFINED };
      throw serializeError('json', new TypeError(`a ${typeof data} has no JSON form`));
    }
    return { body: Buffer.from(text, 'utf8'), flags: 0 };
  },
  decode(bytes, start, end, flags) {
    if (flags & FLAG_UNDEFINED) return undefined;
    return JSON.parse(bytes.toString('utf8', start, end));
  },
};

const rawCodec: Codec = {
  name: 'raw',
  encode(data) {
    if (data instanceof Uint8Array) return { body: data, flags: 0 };
    if (data === undefined || data === null) return { body: EMPTY, flags: 0 };
    throw serializeError('raw', new TypeError(`the raw codec takes a Buffer or Uint8Array, not ${describe(data)}`));
  },
  decode(bytes, start, end) {
    return slice(bytes, start, end);
  },
};

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return `an object (${Object.prototype.toString.call(value)})`;
  return `a ${typeof value}`;
}

export const codecs: Record<CodecName, Codec> = { v8: v8Codec, json: jsonCodec, raw: rawCodec };

let v8Problem: string | undefined | null = null;

/**
 * Why codec `name` can't run in this runtime, or undefined. The v8 codec needs V8's serializer:
 * Bun lacks v8.Serializer, and its v8.serialize() writes a format Node can't read.
 */
export function codecProblem(name: CodecName): string | undefined {
  if (name !== 'v8') return undefined;
  if (v8Problem !== null) return v8Problem;
  const bun = (process.versions as { bun?: string }).bun;
  if (bun !== undefined) return (v8Problem = `it needs V8's serializer, and this is Bun ${bun}`);
  try {
    serializePrimitive(0);
    v8Problem = undefined;
  } catch (err) {
    v8Problem = `node:v8 can't serialize here (${(err as Error).message})`;
  }
  return v8Problem;
}
