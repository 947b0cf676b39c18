import { ShmbusError } from '../errors';
import { show } from '../ids';
import type { MemberId } from './transport';

/**
 * ERR_SHMBUS_TRANSPORT for member `id` of bus `bus`, met on transport `theirs` by a member on
 * `mine`: members of one bus use one transport, and it is not counted as a member.
 */
export function otherTransport(id: MemberId, bus: string, theirs: string, mine: string): ShmbusError {
  return new ShmbusError(
    'ERR_SHMBUS_TRANSPORT',
    `member ${show(id)} of bus ${show(bus)} uses the ${show(theirs)} transport, this one ${show(mine)}: members of one bus use one transport, so it is not counted as a member; open every member with the same transport option`,
  );
}
