/**
 * What the daemon's control handlers are and work with (ops-*.ts), apart from the socket that carries
 * them (server.ts): the handler types, their context, and the one way a handler finds the volume a
 * request names. The handlers only translate: the work is in the volume layer.
 */
import net from 'node:net'
import { VolumeKind } from '../../catalog/catalog'
import { notFound } from '../../errors'
import { Pool } from '../../volume/pool'
import { dirOfKind } from '../../volume/names'
import { Volume } from '../../volume/volume'
import { SpaceAccounting } from '../../inspect/space'
import { Sealer } from '../../seal/sealer'
import { DaemonMetrics } from '../metrics'
import { ArgsOf, Operation, ResultOf, StreamOperation, VolumeArg, checkVolumeArg, operations, volumeKeys } from '../../control/operations'
import { LogEntry, StatusResult } from '../../control/results'

/** The handler of `op`: takes its arguments (checked against the table by the server) and returns its result. */
export type Handler<Op extends Operation = Operation> = (args: ArgsOf<Op>) => Promise<ResultOf<Op>>

/**
 * The stream mode (export and import, ops-transfer.ts): the handler of a stream operation is given the
 * connection after its request line, with the bytes that followed the line, and owns it from then on
 * (its replies, raw bytes in either direction, closing). The socket comes paused.
 */
export type StreamHandler<Op extends StreamOperation = StreamOperation> = (args: ArgsOf<Op>, socket: net.Socket, rest: Buffer) => Promise<void>

/** Every operation's handler: a stream operation's is a StreamHandler, the others' a Handler. */
export type HandlerTable = { [Op in Operation]: Op extends StreamOperation ? StreamHandler<Op> : Handler<Op> }

/** Some of the operations' handlers (an ops-*.ts module's); controlHandlers() checks they cover the table. */
export type Handlers = Partial<HandlerTable>

/** What a daemon's control handlers work with. */
export interface HandlerContext {
  pool: Pool
  space: SpaceAccounting
  sealer: Sealer
  status: () => StatusResult
  log: (message: string) => void
  /** Operation counters, event-loop delay and background jobs (vdiskfs status). */
  metrics: DaemonMetrics
  /** The last error lines of the log, oldest first. */
  recentErrors: () => LogEntry[]
}

/**
 * The visible volume that argument `key` of `op` names (checked against the table by the server);
 * a volume removed while open (hidden) answers to no name: NOT_FOUND.
 */
export function volumeArg<Op extends Operation> (pool: Pool, op: Op, args: ArgsOf<Op>, key: keyof typeof operations[Op]['args']): Volume {
  return volumeAt(pool, args, (operations[op].args as Record<string, unknown>)[key as string] as VolumeArg)
}

/** The visible volume `args` names under `arg`'s keys (a list element's, say: checked here). */
export function volumeAt (pool: Pool, request: object, arg: VolumeArg): Volume {
  const args = request as Record<string, unknown>
  const keys = volumeKeys(arg)
  checkVolumeArg(args, arg)
  const kind = args[keys.kind] as VolumeKind
  const name = args[keys.name] as string
  const volume = pool.get(kind, name)
  if (volume.hidden) throw notFound(`${kind} ${name}`)
  return volume
}

/** Milliseconds since `started` (process.hrtime.bigint()), for replies and log lines. */
export function elapsedSince (started: bigint): number { return Number(process.hrtime.bigint() - started) / 1e6 }

/** DIR/NAME of a volume for the daemon log, control characters shown as \xHH (a name may hold any but '/' and NUL). */
export function named (volume: { kind: VolumeKind, name: string }): string {
  return `${dirOfKind[volume.kind]}/${volume.name}`.replace(/[\u0000-\u001f\u007f-\u009f]/g, c => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
}
