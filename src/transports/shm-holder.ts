/**
 * Who holds a member id on a shm bus, for the ERR_SHMBUS_DUPLICATE_ID message: the process whose
 * flock is on the id's lock file, found in /proc/locks (the shm transport is Linux only). Only
 * words for a message: any failure gives undefined.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** "process 1234 (node web.js)" for the holder of `id` in bus directory `dir`, if it can be found. */
export function shmHolder(dir: string, id: string): string | undefined {
  try {
    const st = fs.statSync(path.join(dir, `${id}.lock`), { bigint: true });
    // /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; dev as major:minor in hex.
    const major = Number(((st.dev >> 8n) & 0xfffn) | ((st.dev >> 32n) & ~0xfffn));
    const minor = Number((st.dev & 0xffn) | ((st.dev >> 12n) & ~0xffn));
    const file = `${major.toString(16).padStart(2, '0')}:${minor.toString(16).padStart(2, '0')}:${st.ino}`;
    for (const line of fs.readFileSync('/proc/locks', 'utf8').split('\n')) {
      const fields = line.trim().split(/\s+/);
      if (fields[1] !== 'FLOCK' || fields[5] !== file) continue;
      const pid = fields[4];
      let command = '';
      try {
        command = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).map((arg) => path.basename(arg)).join(' ');
      } catch {
        // it may have just exited
      }
      return `process ${pid}${command ? ` (${command.slice(0, 60)})` : ''}`;
    }
  } catch {
    // no lock file, or no /proc
  }
  return undefined;
}
