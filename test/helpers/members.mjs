// A bus of N members, each a real process, that a coordinator drives through the bus itself:
// every member serves a few requests ('send', 'got', 'info') so the coordinator can make any
// member send anything and then ask every member what it received.
// No node:cluster here: a forked child that loads it counts as a cluster primary, the hub of a
// bus of its own, not a member of its parent's (see clusterRole() in src/options.ts).
import { fork } from 'node:child_process';
import { codeOf } from './fixture.mjs';

/** Actions whose messages every serving member records. */
export const RECORDED = ['hello', 'one', 'list', 'self', 'bad'];

/** Whether this process is a child that forkChild() made. */
export const isChild = process.env.FIXTURE_CHILD === '1';

/** Forks this program again with child_process.fork, with `env` added (FIXTURE_CHILD=1). */
export function forkChild(env = {}) {
  return fork(process.argv[1], process.argv.slice(2), { env: { ...process.env, FIXTURE_CHILD: '1', ...env } });
}

/**
 * Makes this member serve the coordinator. What it receives under RECORDED actions is kept per
 * sender in segments, each closed by a 'mark' from that sender: since each sender's messages
 * arrive in order, a segment is exactly what one 'send' request handed to this member.
 */
export function serve(bus) {
  const open = new Map(); // sender -> entries since its last mark
  const segments = new Map(); // `${sender}/${token}` -> entries
  const waiting = new Map(); // `${sender}/${token}` -> resolve
  for (const action of RECORDED) {
    bus.on(action, (data, msg) => {
      const entry = `${msg.action}<-${msg.from}${data?.mutated ? ' mutated' : ''}`;
      const list = open.get(msg.from) ?? [];
      list.push(entry);
      open.set(msg.from, list);
    });
  }
  bus.on('mark', (token, msg) => {
    const key = `${msg.from}/${token}`;
    segments.set(key, open.get(msg.from) ?? []);
    open.delete(msg.from);
    waiting.get(key)?.();
  });
  bus.handle('send', ({ action, data, to, token }) => {
    const sent = codeOf(() => bus.sendMessage(action, data, to));
    // The message was encoded at the call: changing the data now must not reach anyone.
    if (data !== null && typeof data === 'object') data.mutated = true;
    bus.sendMessage('mark', token);
    return sent;
  });
  bus.handle('got', async ({ from, token }) => {
    const key = `${from}/${token}`;
    if (!segments.has(key)) await new Promise((resolve) => waiting.set(key, resolve));
    waiting.delete(key);
    return segments.get(key);
  });
  bus.handle('info', async ({ waitFor }) => {
    if (waitFor) await bus.waitFor(waitFor, { timeout: 10_000 });
    return { id: bus.id, transport: bus.transport, peers: bus.peers(), pid: process.pid };
  });
}

/** The coordinator's side of serve(). */
export function coordinator(bus, timeout = 10_000) {
  let tokens = 0;
  const ask = (who, action, data) => bus.request(action, data, { to: who, timeout });
  return {
    info: (who, waitFor) => ask(who, 'info', { waitFor }),
    /**
     * Has member `who` call sendMessage(action, data, to); resolves what the call returned
     * ({ value } or an error code) and, per member in `everyone`, what it received from `who`.
     */
    async send(who, everyone, action, data, to) {
      const token = ++tokens;
      const sent = await ask(who, 'send', { action, data, to, token });
      const received = {};
      await Promise.all(everyone.map(async (id) => (received[id] = await ask(id, 'got', { from: who, token }))));
      return { sent, received };
    },
  };
}
