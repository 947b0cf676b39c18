import { Bus } from './bus';
import { ShmbusError } from './errors';
import { resolveOptions, type OpenOptions } from './options';
import { createTransport } from './transports/select';

export { Bus } from './bus';
export type { MessageInfo, Listener, Handler, PeerListener, ErrorListener, ReservedEvent, Action, RequestOptions, WaitForOptions, BusStats, PeerStats } from './bus';
export { Channel } from './channel';
export { ShmbusError } from './errors';
export type { ShmbusErrorCode } from './errors';
export type { OpenOptions, ShmOptions, ProcessOptions, NatsOptions } from './options';
export type { MemberId, TransportName } from './transports/transport';
export type { CodecName } from './codec';

/**
 * Joins the bus `options.name` as `options.id`. Resolves once this member can be reached and is
 * connected to every member already present; rejects (never throws) with a ShmbusError.
 */
export async function open(options: OpenOptions = {}): Promise<Bus> {
  const resolved = resolveOptions(options);
  const bus = new Bus(resolved);
  const transport = await createTransport(resolved, bus.host);
  try {
    await bus.start(transport);
  } catch (err) {
    await transport.close().catch(() => undefined);
    throw err instanceof ShmbusError ? err : new ShmbusError('ERR_SHMBUS_TRANSPORT', `the ${transport.name} transport could not open: ${(err as Error)?.message ?? err}`, { cause: err });
  }
  return bus;
}
