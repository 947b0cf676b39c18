/**
 * How a hybrid member and a member on transport 'shm' of the same bus meet on one host, to refuse
 * each other. A hybrid member's links are in <root>/<bus>+hybrid, where shm members never look;
 * so it also puts a sentinel in the plain bus directory <root>/<bus>: a shm member of its own
 * named `hybrid.<its id>`, with the smallest rings and no polling, that carries nothing. Whichever
 * of the two comes first, the shm handshake links the newcomer to the other: a shm member that
 * links to a sentinel (a proven one: the id it names holds its lock in <bus>+hybrid) refuses that
 * hybrid member by name, and the sentinel tells its hybrid member of every shm member it links
 * to, which refuses it by name. Sentinels link to each other as well, and leave each other out.
 * A hybrid id too long to be named so (over 57 characters) puts no sentinel.
 */
import * as path from 'node:path';
import { parseMemberId } from '../ids';
import { otherTransport } from './refusal';
import { shmHolder } from './shm-holder';
import type { MemberId } from './transport';

const PREFIX = 'hybrid.';
/** The longest member id the addon takes (native/handshake.h). */
const MAX_ID = 64;

/** The sentinel's name of the hybrid member `id`, or undefined where the name would be too long. */
export function sentinelName(id: MemberId): string | undefined {
  const name = `${PREFIX}${id}`;
  return name.length <= MAX_ID ? name : undefined;
}

/** The hybrid member whose sentinel in bus directory `dir` is named `name`, or undefined (then it is a shm member). */
function sentinelOf(dir: string, name: string): MemberId | undefined {
  if (!name.startsWith(PREFIX)) return undefined;
  const id = parseMemberId(name.slice(PREFIX.length));
  if (id === undefined) return undefined;
  return shmHolder(`${path.resolve(dir)}+hybrid`, String(id)) !== undefined ? id : undefined;
}

/** What a member on transport 'shm' in bus directory `dir` does with a member `name` that linked to it: undefined to count it, else the refusal. */
export function screenForShm(dir: string, busName: string, name: string): Error | undefined {
  const id = sentinelOf(dir, name);
  return id === undefined ? undefined : otherTransport(id, busName, 'hybrid', 'shm');
}

/** What a hybrid member's sentinel does with a member `name` that linked to it: never counted; a shm member's refusal, or null for another sentinel. */
export function screenForSentinel(dir: string, busName: string, name: string): Error | null {
  if (sentinelOf(dir, name) !== undefined) return null;
  return otherTransport(parseMemberId(name) ?? name, busName, 'shm', 'hybrid');
}
