/**
 * The one loader of the native addon (the shared-memory transport's core). It never throws:
 * callers get the addon or the reason it can't be had, naming the cause and the fix.
 */
import * as path from 'node:path';

/** The kinds of the records handed to a NativeBus's deliver callback: see native/binding.cc. */
export interface NativeEvents {
  FRAME: number;
  FRAME_OWN: number;
  UP: number;
  DOWN: number;
  ERROR: number;
  READY: number;
  WRITABLE: number;
  BATCH: number;
}

export interface NativeBusOptions {
  /** The bus directory (already created and checked). */
  dir: string;
  /** This member's id as its file name: String(id). */
  id: string;
  ringSize: number;
  spinUs: number;
  maxMessageSize: number;
  /** Queued bytes from which the member asks a peer to say when it has taken some. */
  notifyBytes: number;
}

export type NativeDeliver = (
  meta: Int32Array,
  count: number,
  extras: Array<Buffer | string> | undefined,
) => void;

export interface NativeBus {
  /** [one of NativeAddon.startResults, message, links still being made]. */
  start(): [number, string, number];
  /** One of NativeAddon.sendResults. */
  send(slot: number, head: Uint8Array, body: Uint8Array): number;
  /** Frame i: bytes[meta[3i+1], + meta[3i+2]) to slot meta[3i], for i < count. */
  sendBatch(bytes: Uint8Array, meta: Int32Array, count: number): void;
  queued(slot: number): number;
  /** Removes a dead member's socket file: 1 removed, 0 none, -1 its id is held. */
  reap(id: string): number;
  ref(): void;
  unref(): void;
  close(): void;
}

/** A run of the shm transport's floor: see native/floor.h. */
export interface NativeFloorOptions {
  /** 'drive' measures; 'serve' (the other process) echoes and counts until the driver quits. */
  role: 'drive' | 'serve';
  dir: string;
  id: string;
  peer: string;
  ringSize: number;
  maxMessageSize: number;
  maxQueueBytes: number;
  payloads?: number[];
  warmupMs?: number;
  rttMs?: number;
  tpMs?: number;
}

/** One payload's measurements: round trips in ns, throughput, CPU of both processes. */
export interface NativeFloorResult {
  payload: number;
  p50: number;
  p99: number;
  p999: number;
  max: number;
  count: number;
  msgs: number;
  seconds: number;
  rttCpuMs: number;
  tpCpuMs: number;
}

export interface NativeAddon {
  Bus: new (options: NativeBusOptions, deliver: NativeDeliver) => NativeBus;
  /** Removes a bus directory whose members all died (their files, then it): whether it is gone. */
  sweep(dir: string): boolean;
  protocolVersion: number;
  /** The numbers the addon uses, read from it (their one source is native/binding.cc). */
  events: NativeEvents;
  startResults: { STARTED: number; DUPLICATE_ID: number; FAILED: number };
  /** In the ring; queued outside it; no such link; the link is broken. */
  sendResults: { SENT: number; QUEUED: number; NO_LINK: number; BROKEN: number };
  /** Blocks the thread for the whole run; '' when done, else what failed. */
  floor(options: NativeFloorOptions, onResult: (r: NativeFloorResult) => void): string;
}

let cached: { addon: NativeAddon } | { reason: string } | undefined;

/** The addon, or why it can't load here. */
export function loadNative(): { addon: NativeAddon } | { reason: string } {
  if (cached !== undefined) return cached;
  if (process.platform !== 'linux') {
    cached = { reason: `the shared-memory transport runs on Linux only, not on ${process.platform}` };
    return cached;
  }
  const bun = (process.versions as { bun?: string }).bun;
  if (bun !== undefined) {
    // Bun loads Node-API addons but aborts the process at the first libuv call the addon makes.
    cached = { reason: `the shared-memory transport needs Node's libuv event loop, which Bun ${bun} does not provide; run it under Node.js, or use transport 'nats' (or 'process')` };
    return cached;
  }
  const root = path.resolve(__dirname, '..');
  try {
    cached = { addon: require('node-gyp-build')(root) as NativeAddon };
  } catch (err) {
    const message = (err as Error).message.split('\n')[0];
    cached = {
      reason: `the native addon did not load (${message}); build it with \`npm rebuild shmbus\` (needs make, g++ and python3)`,
    };
  }
  return cached;
}

/** Why the native addon can't be used in this process, or undefined when it can. */
export function nativeUnavailableReason(): string | undefined {
  const r = loadNative();
  return 'reason' in r ? r.reason : undefined;
}
