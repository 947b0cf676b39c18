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
  /** `body` comes from another process: a codec that can't decode it throws. */
  decode(body: Buffer, flags: number): unknown;
}

const EMPTY = new Uint8Array(0);

function serializeError(codec: CodecName, err: unknown): ShmbusError {
  const reason = err instanceof Error ? err.message : String(err);
  return new ShmbusError('ERR_SHMBUS_SERIALIZE', `data can't be encoded with the ${codec} codec: ${reason}`, { cause: err });
}

const v8Codec: Codec = {
  name: 'v8',
  encode(data) {
    try {
      return { body: v8.serialize(data), flags: 0 };
    } catch (err) {
      throw serializeError('v8', err);
    }
  },
  decode(body) {
    return v8.deserialize(body);
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
  decode(body, flags) {
    if (flags & FLAG_UNDEFINED) return undefined;
    return JSON.parse(body.toString('utf8'));
  },
};

const rawCodec: Codec = {
  name: 'raw',
  encode(data) {
    if (data instanceof Uint8Array) return { body: data, flags: 0 };
    if (data === undefined || data === null) return { body: EMPTY, flags: 0 };
    throw serializeError('raw', new TypeError(`the raw codec takes a Buffer or Uint8Array, not ${describe(data)}`));
  },
  decode(body) {
    return body;
  },
};

function describe(value: unknown): string {
  if (Array.isArray(value)) return 'an array';
  if (typeof value === 'object') return `an object (${Object.prototype.toString.call(value)})`;
  return `a ${typeof value}`;
}

export const codecs: Record<CodecName, Codec> = { v8: v8Codec, json: jsonCodec, raw: rawCodec };
