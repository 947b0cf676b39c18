/**
 * One benchmark link between the two processes of a measurement: a shmbus bus (shm, process,
 * nats) or one of the references a user has today (ipc: Node's child.send() on its default
 * JSON channel; uds: a node:net Unix socket with 4-byte length-prefixed frames; natsraw: the NATS
 * client itself).
 *
 * A link carries data values (a Buffer for the raw codec and uds, a string otherwise) and small
 * control objects, in order, on the same path, so a control message marks a point in the data
 * stream. The driver ("A") and the peer ("B") use the same interface for every transport.
 */
import * as net from 'node:net';
import type { ChildProcess } from 'node:child_process';

export type Data = Buffer | string;
export type Ctl = Record<string, unknown> & { op: string };

/** What trySend() did: sent and go on; sent but wait for writable() first; not sent, wait and retry. */
export const SENT = 0;
export const SENT_WAIT = 1;
export const NOT_SENT = 2;

export interface Link {
  /** One data value; see SENT, SENT_WAIT, NOT_SENT. */
  trySend(v: Data): number;
  /** Where round trips are a request and its answer (natsraw): the peer's answer to `v`. */
  request?(v: Data): Promise<Data>;
  /** The largest data value the link carries, where it has a limit of its own. */
  readonly maxData?: number;
  /** Resolves once the link takes data again after SENT_WAIT or NOT_SENT. */
  writable(): Promise<void>;
  sendCtl(c: Ctl): Promise<void>;
  /** Called for every data value that arrives. */
  onData: (v: Data) => void;
  /** Called for every control object that arrives. */
  onCtl: (c: Ctl) => void;
  close(): Promise<void>;
}

type BusLike = import('../bus').Bus;

/** A shmbus bus between members 0 and 1: data under action 'd', control under action 'c'. */
export class BusLink implements Link {
  onData: (v: Data) => void = () => undefined;
  onCtl: (c: Ctl) => void = () => undefined;
  private readonly raw: boolean;

  constructor(private readonly bus: BusLike, private readonly peer: number, codec: string) {
    this.raw = codec === 'raw';
    bus.on('d', (data: Data) => this.onData(data));
    bus.on('c', (data: unknown) => this.onCtl(this.raw ? JSON.parse((data as Buffer).toString('utf8')) : data));
  }

  trySend(v: Data): number {
    try {
      this.bus.sendMessage('d', v, this.peer);
      return SENT;
    } catch (err) {
      if ((err as { code?: string }).code === 'ERR_SHMBUS_BACKPRESSURE') return NOT_SENT;
      throw err;
    }
  }

  writable(): Promise<void> {
    return this.bus.drain();
  }

  async sendCtl(c: Ctl): Promise<void> {
    const data = this.raw ? Buffer.from(JSON.stringify(c), 'utf8') : c;
    for (;;) {
      try {
        this.bus.sendMessage('c', data, this.peer);
        return;
      } catch (err) {
        if ((err as { code?: string }).code !== 'ERR_SHMBUS_BACKPRESSURE') throw err;
        await this.bus.drain();
      }
    }
  }

  close(): Promise<void> {
    return this.bus.close();
  }
}

/**
 * Node's IPC channel with its default (JSON) serialization, as most programs use it: data are
 * strings, control messages are objects `{ c }`. Backpressure: send() returns false once the
 * channel's write queue is long; then wait until what was sent has been written.
 */
export class IpcLink implements Link {
  onData: (v: Data) => void = () => undefined;
  onCtl: (c: Ctl) => void = () => undefined;
  private sent = 0;
  private written = 0;
  private waitFor = 0;
  private wake: (() => void) | null = null;
  private readonly target: ChildProcess | NodeJS.Process;
  private readonly onWritten = (): void => {
    this.written++;
    if (this.wake && this.written >= this.waitFor) {
      const wake = this.wake;
      this.wake = null;
      wake();
    }
  };

  constructor(target: ChildProcess | NodeJS.Process, private readonly sender: boolean) {
    this.target = target;
    target.on('message', (m: unknown) => {
      if (typeof m === 'string') this.onData(m);
      else if (m !== null && typeof m === 'object' && 'c' in m) this.onCtl((m as { c: Ctl }).c);
    });
  }

  trySend(v: Data): number {
    // Only the sending side of a throughput run needs to know when its writes complete.
    if (!this.sender) {
      this.target.send!(v);
      return SENT;
    }
    this.sent++;
    const more = this.target.send!(v, undefined, undefined, this.onWritten);
    return more ? SENT : SENT_WAIT;
  }

  writable(): Promise<void> {
    if (this.written >= this.sent) return Promise.resolve();
    this.waitFor = this.sent;
    return new Promise((resolve) => (this.wake = resolve));
  }

  async sendCtl(c: Ctl): Promise<void> {
    this.target.send!({ c });
  }

  async close(): Promise<void> {
    if ('disconnect' in this.target && this.target.connected) this.target.disconnect();
  }
}

/**
 * A node:net Unix socket with length-prefixed frames: u32 LE length, then the bytes. The top bit
 * of the length marks a control frame (JSON). One write() per frame, which means one copy of the
 * payload into the frame; backpressure through write()'s return value and 'drain'.
 */
export class UdsLink implements Link {
  onData: (v: Data) => void = () => undefined;
  onCtl: (c: Ctl) => void = () => undefined;
  private cur: Buffer | null = null;
  private curFill = 0;
  private curCtl = false;
  private readonly hdr = Buffer.alloc(4);
  private hdrFill = 0;

  constructor(private readonly sock: net.Socket) {
    sock.on('data', (chunk: Buffer) => this.read(chunk));
  }

  private frame(v: Buffer, ctl: boolean): Buffer {
    const f = Buffer.allocUnsafe(4 + v.length);
    f.writeUInt32LE((v.length | (ctl ? 0x80000000 : 0)) >>> 0, 0);
    v.copy(f, 4);
    return f;
  }

  trySend(v: Data): number {
    return this.sock.write(this.frame(v as Buffer, false)) ? SENT : SENT_WAIT;
  }

  writable(): Promise<void> {
    if (!this.sock.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve) => this.sock.once('drain', resolve));
  }

  async sendCtl(c: Ctl): Promise<void> {
    if (!this.sock.write(this.frame(Buffer.from(JSON.stringify(c), 'utf8'), true))) await this.writable();
  }

  private emit(body: Buffer, ctl: boolean): void {
    if (ctl) this.onCtl(JSON.parse(body.toString('utf8')));
    else this.onData(body);
  }

  private start(word: number): void {
    const len = word & 0x7fffffff;
    const ctl = word >>> 31 === 1;
    if (len === 0) return this.emit(Buffer.alloc(0), ctl);
    this.cur = Buffer.allocUnsafe(len);
    this.curFill = 0;
    this.curCtl = ctl;
  }

  private read(chunk: Buffer): void {
    let off = 0;
    const end = chunk.length;
    while (off < end) {
      const cur = this.cur;
      if (cur) {
        const take = Math.min(cur.length - this.curFill, end - off);
        chunk.copy(cur, this.curFill, off, off + take);
        this.curFill += take;
        off += take;
        if (this.curFill === cur.length) {
          this.cur = null;
          this.emit(cur, this.curCtl);
        }
        continue;
      }
      if (this.hdrFill > 0 || end - off < 4) {
        while (this.hdrFill < 4 && off < end) this.hdr[this.hdrFill++] = chunk[off++];
        if (this.hdrFill < 4) return;
        this.hdrFill = 0;
        this.start(this.hdr.readUInt32LE(0));
        continue;
      }
      const word = chunk.readUInt32LE(off);
      off += 4;
      const len = word & 0x7fffffff;
      if (end - off >= len) {
        this.emit(chunk.subarray(off, off + len), word >>> 31 === 1);
        off += len;
      } else {
        this.start(word);
      }
    }
  }

  async close(): Promise<void> {
    await new Promise<void>((resolve) => this.sock.end(resolve));
  }
}

/** The subset of @nats-io/transport-node that NatsRawLink uses. */
interface RawNatsMsg {
  data: Uint8Array;
  respond(data?: Uint8Array): boolean;
}
export interface RawNats {
  info?: { max_payload: number };
  publish(subject: string, data?: Uint8Array): void;
  subscribe(subject: string, opts: { callback: (err: Error | null, msg: RawNatsMsg) => void }): unknown;
  request(subject: string, data: Uint8Array, opts: { timeout: number }): Promise<{ data: Uint8Array }>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

/** Messages published before the publisher waits for the server (a flush). */
const NATS_FLUSH_EVERY = 1000;
/** ... or bytes: a thousand large messages would outrun any subscriber and be dropped as a slow consumer. */
const NATS_FLUSH_BYTES = 8 * 2 ** 20;

const bytesOf = (d: Uint8Array): Buffer => Buffer.from(d.buffer, d.byteOffset, d.byteLength);

/**
 * The NATS client between the two processes, as a user writes it with no bus: data published on
 * the other side's subject with a flush every NATS_FLUSH_EVERY messages, round trips as
 * request/reply, control messages as JSON on a subject of their own (one connection to one
 * subscriber keeps them in order with the data).
 */
export class NatsRawLink implements Link {
  onData: (v: Data) => void = () => undefined;
  onCtl: (c: Ctl) => void = () => undefined;
  readonly maxData: number;
  private unflushed = 0;
  private unflushedBytes = 0;

  /** `own` and `other` are this side's and the other side's subject prefixes. */
  constructor(private readonly nc: RawNats, own: string, private readonly other: string) {
    this.maxData = nc.info?.max_payload ?? 1024 * 1024;
    nc.subscribe(`${own}.d`, { callback: (err, msg) => err || this.onData(bytesOf(msg.data)) });
    nc.subscribe(`${own}.c`, { callback: (err, msg) => err || this.onCtl(JSON.parse(bytesOf(msg.data).toString('utf8'))) });
    nc.subscribe(`${own}.r`, { callback: (err, msg) => err || msg.respond(msg.data) });
  }

  trySend(v: Data): number {
    // The client holds on to what it is given until it writes it: a copy, as the bench reuses its buffer.
    this.nc.publish(`${this.other}.d`, Buffer.from(v as Buffer));
    this.unflushedBytes += v.length;
    if (++this.unflushed < NATS_FLUSH_EVERY && this.unflushedBytes < NATS_FLUSH_BYTES) return SENT;
    this.unflushed = this.unflushedBytes = 0;
    return SENT_WAIT;
  }

  writable(): Promise<void> {
    return this.nc.flush();
  }

  async request(v: Data): Promise<Data> {
    return bytesOf((await this.nc.request(`${this.other}.r`, v as Buffer, { timeout: 60_000 })).data);
  }

  async sendCtl(c: Ctl): Promise<void> {
    this.nc.publish(`${this.other}.c`, Buffer.from(JSON.stringify(c), 'utf8'));
  }

  close(): Promise<void> {
    return this.nc.close();
  }
}
