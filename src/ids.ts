/**
 * Member ids, this process's place in a node:cluster application (where default ids come from),
 * and how values are shown in messages: what the bus, its options and the transports all use.
 * Nothing here imports any of them.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import { invalidArg } from './errors';

/** A member id: an integer 0..2^31-1 (a worker) or a string (a named process). */
export type MemberId = number | string;

const STRING_ID = /^[A-Za-z_][A-Za-z0-9_.-]{0,63}$/;
const MAX_INT_ID = 2 ** 31 - 1;

export function isMemberId(id: unknown): id is MemberId {
  if (typeof id === 'number') return Number.isInteger(id) && id >= 0 && id <= MAX_INT_ID;
  return typeof id === 'string' && STRING_ID.test(id);
}

export function checkMemberId(id: unknown, what = 'id'): MemberId {
  if (!isMemberId(id)) {
    throw invalidArg(`${what} must be an integer 0..2^31-1 or a string matching ${STRING_ID}, got ${show(id)}`);
  }
  return id;
}

/** The host name as the start of a string id: id characters only, at most 40, starting with a letter. */
export function hostToken(): string {
  const host = os.hostname().replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 40);
  return /^[A-Za-z_]/.test(host) ? host : `h${host}`;
}

let processPart: string | undefined;

/**
 * Six hex digits that tell apart processes with one host name and pid (containers share pid 1),
 * the same in every thread of a process (a worker thread's default id is its main thread's with
 * its threadId added): so not drawn in JS, which would draw one per thread, but hashed from what
 * the process has of its own: its auxiliary vector (the addresses the kernel chose at random for
 * it at exec: its AT_RANDOM bytes and vDSO), the kernel's boot id (one per host), its pid namespace
 * (one per container) and its start time. Where /proc can't be read (not Linux), from the host
 * name, pid and parent pid.
 */
export function processToken(): string {
  if (processPart !== undefined) return processPart;
  const hash = createHash('sha256');
  try {
    const stat = fs.readFileSync('/proc/self/stat', 'utf8');
    const startTime = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19];
    hash.update(fs.readFileSync('/proc/self/auxv'));
    hash.update([fs.readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim(), fs.readlinkSync('/proc/self/ns/pid'), startTime].join('/'));
  } catch {
    hash.update([os.hostname(), process.pid, process.ppid].join('/'));
  }
  processPart = hash.digest('hex').slice(0, 6);
  return processPart;
}

/** Reads an id from text (environment variables, file names): digits are a worker number. */
export function parseMemberId(text: string): MemberId | undefined {
  const id: MemberId = /^\d{1,10}$/.test(text) ? Number(text) : text;
  return isMemberId(id) ? id : undefined;
}

/** How long a string an error message repeats before it cuts it short. */
const SHOWN_CHARS = 40;

/** A value as an error message quotes it: strings in double quotes, long ones cut short. */
export function show(value: unknown): string {
  if (typeof value === 'string') {
    if (value.length <= SHOWN_CHARS) return JSON.stringify(value);
    return `${JSON.stringify(value.slice(0, SHOWN_CHARS))}… (${value.length} characters)`;
  }
  if (typeof value === 'bigint') return `${value}n`;
  if (value === null || typeof value !== 'object') return String(value);
  return Array.isArray(value) ? 'an array' : 'an object';
}

/** Orders ids as peers() promises: numbers ascending, then strings. */
export function compareIds(a: MemberId, b: MemberId): number {
  if (typeof a === 'number') return typeof b === 'number' ? a - b : -1;
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/**
 * This process's place in a node:cluster application: a worker (Node loads node:cluster in every
 * worker), or a primary (a process, not a worker, whose program loaded node:cluster), or neither.
 */
export function clusterRole(): { worker?: import('node:cluster').Worker; primary: boolean; cluster?: import('node:cluster').Cluster } {
  const loaded = (process as unknown as { moduleLoadList?: string[] }).moduleLoadList;
  if (!Array.isArray(loaded) || !loaded.includes('NativeModule cluster')) return { primary: false };
  const cluster = require('node:cluster') as import('node:cluster').Cluster;
  return cluster.isWorker ? { worker: cluster.worker, primary: false, cluster } : { primary: true, cluster };
}
