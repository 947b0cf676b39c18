import { debuglog } from 'node:util';
import { ShmbusError } from '../errors';
import type { ResolvedOptions } from '../options';
import type { Transport, TransportContext, TransportHost, TransportName } from './transport';
import { createProcessTransport } from './process';

const debug = debuglog('shmbus');
let autoWarned = false;

/**
 * Picks and makes the transport that `options.transport` names ('auto': with a `nats` section
 * 'hybrid' where shm can run, else 'nats'; without one 'shm' where it can run, else 'process').
 */
export async function createTransport(options: ResolvedOptions, host: TransportHost): Promise<Transport> {
  let name: TransportName;
  let why: string;
  if (options.transport === 'auto' && options.natsGiven) {
    const reason = shmUnavailableReason();
    name = reason === undefined ? 'hybrid' : 'nats';
    why = reason === undefined ? "'auto' with a nats section, and the shared-memory addon loads here" : `'auto' with a nats section, and shm can't run here: ${reason}`;
  } else if (options.transport === 'auto') {
    const reason = shmUnavailableReason();
    name = reason === undefined ? 'shm' : 'process';
    why = reason === undefined ? "'auto', and the shared-memory addon loads here" : `'auto', and shm can't run here: ${reason}`;
    if (reason !== undefined && !autoWarned) {
      autoWarned = true;
      process.emitWarning(
        `shmbus: the shared-memory transport can't run here: ${reason}. Using the 'process' transport instead; to choose it without this warning, pass transport: 'process' or set SHMBUS_TRANSPORT=process`,
        { code: 'SHMBUS_FALLBACK' },
      );
    }
  } else {
    name = options.transport;
    why = process.env.SHMBUS_TRANSPORT ? `SHMBUS_TRANSPORT=${process.env.SHMBUS_TRANSPORT}` : `the transport option`;
  }
  debug('bus %s as %s: transport %s (%s)', options.name, options.id, name, why);
  const ctx: TransportContext = {
    busName: options.name,
    id: options.id,
    host,
    maxMessageSize: options.maxMessageSize,
    maxQueueBytes: options.maxQueueBytes,
    options: name === 'hybrid' ? { shm: options.shm, nats: options.nats } : options[name],
  };
  switch (name) {
    case 'shm': {
      const reason = shmUnavailableReason();
      if (reason !== undefined) throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the shm transport can't run here: ${reason}; or choose transport 'process' (Node's IPC channel) or 'nats'`);
      return require('./shm').createShmTransport(ctx);
    }
    case 'process':
      return createProcessTransport(ctx);
    case 'nats':
      return require('./nats').createNatsTransport(ctx);
    case 'hybrid': {
      const reason = shmUnavailableReason();
      if (reason !== undefined) throw new ShmbusError('ERR_SHMBUS_TRANSPORT', `the hybrid transport can't run here: its local links need shm, and ${reason}; or choose transport 'nats'`);
      return require('./hybrid').createHybridTransport(ctx);
    }
  }
}

/** Why the shared-memory transport can't run in this process, or undefined if it can. */
function shmUnavailableReason(): string | undefined {
  try {
    return require('../native').nativeUnavailableReason();
  } catch (err) {
    return `the native module is missing (${(err as Error).message})`;
  }
}
