/**
 * One benchmark link between the two processes of a measurement: a shmbus bus (shm, process,
 * nats) or one of the two references a user has today (ipc: Node's child.send() on its default
 * JSON channel; uds: a node:net Unix socket with 4-byte length-prefixed frames).
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
