// What a TypeScript user may and may not write: `tsc -p test/types` (run by test/types.test.mjs)
// must pass. Each `@ts-expect-error` line must be an error, so a type that lets it through fails.
import { open, Channel, ShmbusError, type Bus, type MemberId, type ShmbusErrorCode } from 'shmbus';

const bus: Bus = await open({
  name: 'app',
  id: 'cache',
  transport: 'auto',
  codec: 'v8',
  shm: { dir: '/run/app', ringSize: 1 << 20, spinUs: 0 },
  process: { handshakeTimeout: 2000 },
  nats: { servers: ['nats://127.0.0.1:4222'], heartbeatInterval: 500, subjectPrefix: 'app', user: 'u', pass: 'p' },
});

// @ts-expect-error the option is ringSize
await open({ shm: { ringsize: 4096 } });
// @ts-expect-error ringSize is a number of bytes
await open({ shm: { ringSize: '1MiB' } });
// @ts-expect-error the process transport has no such option
await open({ process: { timeout: 1000 } });
// @ts-expect-error heartbeatInterval is in ms
await open({ nats: { heartbeatInterval: '500ms' } });
// @ts-expect-error not a transport
await open({ transport: 'tcp' });
// @ts-expect-error not a codec
await open({ codec: 'xml' });

// Ids are numbers or strings.
bus.on('peer:join', (id: MemberId) => console.log(id));
bus.on('peer:leave', (id) => {
  const n: number | string = id;
  return n;
});
// @ts-expect-error ids may be numbers
bus.on('peer:join', (id: string) => id.toUpperCase());
// @ts-expect-error ids may be strings
bus.on('peer:leave', (id: number) => id + 1);
bus.on('error', (err: Error) => console.error(err.message));
// @ts-expect-error an 'error' listener gets an Error
bus.on('error', (err: string) => err.length);
bus.off('peer:join', (id: MemberId) => id);

// Any other action name: data and the message's sender.
bus.on('reload', (data: { version: number }, msg) => {
  const from: MemberId = msg.from;
  const action: string = msg.action;
  return [data.version, from, action];
});
const dynamic: string = 'reload';
bus.on(dynamic, () => undefined);

const count: number = bus.sendMessage('reload', { version: 2 }, [1, 'cache']);
// @ts-expect-error reserved names can't be sent
bus.sendMessage('peer:join', 1);
// @ts-expect-error reserved names can't be handled
bus.handle('error', () => 1);
// @ts-expect-error reserved names can't be requested
await bus.request('peer:leave', null, { to: 1 });
// @ts-expect-error a request needs `to`
await bus.request('stats', null, { timeout: 1000 });

bus.handle('stats', async (data, msg) => ({ from: msg.from, data }));
const stats = await bus.request<{ rss: number }>('stats', null, { to: 2, timeout: 2000 });
const rss: number = stats.rss;

const ch = new Channel<number>();
ch.push(1);
const got: number | undefined = await ch.pop(-1);
// @ts-expect-error a Channel<number> takes numbers
ch.push('one');

try {
  await bus.waitFor([0, 'cache'], { timeout: 5000 });
} catch (err) {
  if (err instanceof ShmbusError) {
    const code: ShmbusErrorCode = err.code;
    // @ts-expect-error not a code shmbus has
    const wrong: ShmbusErrorCode = 'ERR_SHMBUS_OOPS';
    console.log(code, wrong);
  }
}
console.log(count, rss, got);
await bus.close();

// shmbus/socket.io: createAdapter as @socket.io/cluster-adapter's, with a bus or open() options.
import { createAdapter, setupPrimary } from 'shmbus/socket.io';
setupPrimary();
setupPrimary({ bus: { name: 'chat' } });
createAdapter();
createAdapter({ requestsTimeout: 1000, heartbeatInterval: 500, heartbeatTimeout: 2000, bus });
createAdapter({ bus: { name: 'chat', transport: 'nats' } });
// @ts-expect-error requestsTimeout is a number of ms
createAdapter({ requestsTimeout: '1s' });
// @ts-expect-error bus is a Bus or open() options
createAdapter({ bus: 'chat' });
