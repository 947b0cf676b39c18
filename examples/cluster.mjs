// A cluster primary and four workers on one bus: broadcast, a message to one worker, requests
// with answers and errors, then a clean exit. Run: node examples/cluster.mjs
// Set SHMBUS_TRANSPORT=process (or shm, nats) to choose the transport.
import cluster from 'node:cluster';
import { open } from 'shmbus';

const WORKERS = 4;
const bus = await open({ name: 'example' });

// Every member, the primary included, listens for 'reload' (as imi's sendMessage example).
bus.on('reload', (config, msg) => {
  console.log(`[${bus.id}] reload from ${msg.from}: version ${config.version}`);
});
bus.handle('stats', () => ({ pid: process.pid, rss: process.memoryUsage().rss }));

if (cluster.isPrimary) {
  console.log(`primary on transport '${bus.transport}'`);
  for (let i = 0; i < WORKERS; i++) cluster.fork();
  await bus.waitFor([1, 2, 3, 4], { timeout: 10_000 });

  const count = bus.sendMessage('reload', { version: 2, at: new Date() });
  console.log(`reload handed to ${count} members`);
  bus.sendMessage('greet', 'hello worker 1', 1);

  for (const id of bus.peers()) {
    const { pid, rss } = await bus.request('stats', null, { to: id, timeout: 2000 });
    console.log(`worker ${id}: pid ${pid}, rss ${(rss / 2 ** 20).toFixed(1)} MiB`);
  }
  try {
    await bus.request('no-such-action', null, { to: 2 });
  } catch (err) {
    console.log(`as expected: ${err.code}`);
  }

  bus.sendMessage('quit', null, bus.peers());
  cluster.on('exit', () => {
    if (Object.keys(cluster.workers).length === 0) bus.close();
  });
} else {
  bus.on('greet', (text, msg) => console.log(`[${bus.id}] ${msg.from} says: ${text}`));
  bus.on('quit', async () => {
    await bus.close();
    process.disconnect();
  });
}
