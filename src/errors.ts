/** Every error shmbus raises is a ShmbusError whose `code` is one of these. */
export type ShmbusErrorCode =
  | 'ERR_SHMBUS_TIMEOUT'
  | 'ERR_SHMBUS_PEER_GONE'
  | 'ERR_SHMBUS_NO_HANDLER'
  | 'ERR_SHMBUS_UNKNOWN_PEER'
  | 'ERR_SHMBUS_REMOTE'
  | 'ERR_SHMBUS_SERIALIZE'
  | 'ERR_SHMBUS_TOO_LARGE'
  | 'ERR_SHMBUS_BACKPRESSURE'
  | 'ERR_SHMBUS_INVALID_ARG'
  | 'ERR_SHMBUS_DUPLICATE_ID'
  | 'ERR_SHMBUS_CLOSED'
  | 'ERR_SHMBUS_ABORTED'
  | 'ERR_SHMBUS_TRANSPORT'
  | 'ERR_SHMBUS_PROTOCOL'
  | 'ERR_SHMBUS_LISTENER';

export class ShmbusError extends Error {
  readonly code: ShmbusErrorCode;
  /** For ERR_SHMBUS_REMOTE: the `code` of the error the remote handler threw, if it had one. */
  readonly remoteCode?: string;

  constructor(code: ShmbusErrorCode, message: string, options?: { cause?: unknown; remoteCode?: string }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ShmbusError';
    this.code = code;
    if (options?.remoteCode !== undefined) this.remoteCode = options.remoteCode;
  }
}

export function invalidArg(message: string): ShmbusError {
  return new ShmbusError('ERR_SHMBUS_INVALID_ARG', message);
}
