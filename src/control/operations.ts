/**
 * The control operations, as one typed table shared by the client (client.ts) and the server
 * (src/daemon/server). Each entry says an operation's arguments (how each is checked, and so its type)
 * and its result's type. The client's `call(mountpoint, op, args)` takes only an operation of the
 * table with its arguments' types and returns its result's type; the server checks every request
 * against the same entry before the handler runs, and a handler must take those arguments and return
 * that result (Handler<Op>, daemon/server/handler.ts). A name the table lacks does not compile on
 * either side, and the daemon's handler table must cover exactly these names.
 *
 * Arguments are checked here for their presence and type (a list's elements too); what they mean (a
 * volume's existence, a rule's count, a header's fields) is the handlers' to check. A volume travels as
 * two strings, PREFIXKind and PREFIXName (kind and name when the prefix is empty).
 */
import type { ImportRow, VolumeKind } from '../catalog/catalog'
import { invalid } from '../errors'
import type { VerifyReport } from '../inspect/verify'
import type { SpaceReport } from '../inspect/space'
import type { VolumeFacts } from '../inspect/facts'
import type { ByteRange } from '../map/diff'
import type { RemoteDefinition } from '../remote/remotes'
import type { StreamHeader } from '../transfer/stream'
import type { GcReport } from '../volume/maintenance'
import type { LazyPullProgress } from '../volume/lazy'
import type { SealReport } from '../volume/seal-extent'
import type { VolumeInfo } from '../volume/volume'
import type { CopyResult, Elapsed, ImportFinish, ImportStaged, MapResult, Progress, PruneRow, StatsResult, StatusResult } from './results'

/** An argument: how a value is checked; T is the type a value that passes has, `optional` whether it may be absent. */
export interface Arg<T = unknown, O extends boolean = boolean> {
  readonly check: (value: unknown) => boolean
  readonly optional: O
  /** Never set: carries T for the compiler. */
  readonly type?: T
}

/** A volume argument: `${prefix}Kind` and `${prefix}Name` (`kind`, `name` for ''); `what` names it in errors. */
export interface VolumeArg<P extends string = string> { readonly volume: string, readonly prefix: P }

export type ArgSpec = Arg | VolumeArg

/** A result's type, for the compiler only. */
export interface Returns<T> { readonly result?: T }

export interface OperationSpec {
  args: Record<string, ArgSpec>
  result: Returns<unknown>
  /** Stream operations: the type of the reply line that ends the stream (importStream's). */
  final?: Returns<unknown>
  /** Changes nothing: its refusals are not logged by the daemon. */
  quiet?: boolean
  /** Carries a stream after its reply line (the server's stream mode): export and import. */
  stream?: boolean
}

const volumeKinds: readonly string[] = ['disk', 'backup', 'clone'] satisfies VolumeKind[]

function arg<T> (check: (value: unknown) => boolean): Arg<T, false> { return { check, optional: false } }
const string = arg<string>(value => typeof value === 'string')
const boolean = arg<boolean>(value => typeof value === 'boolean')
const number = arg<number>(value => typeof value === 'number')
function optional<T> (spec: Arg<T, false>): Arg<T, true> { return { check: spec.check, optional: true } }
function nullable<T> (spec: Arg<T, false>): Arg<T | null, false> { return arg<T | null>(value => value === null || spec.check(value)) }
function listOf<T> (element: Arg<T, false>): Arg<T[], false> { return arg<T[]>(value => Array.isArray(value) && value.every(element.check)) }
/** A JSON object, of the shape the handler checks further (a stream header). */
function object<T> (): Arg<T, false> { return arg<T>(value => value !== null && typeof value === 'object' && !Array.isArray(value)) }
function volume<P extends string> (prefix: P, what: string = prefix): VolumeArg<P> { return { volume: what, prefix } }
/** An object holding one volume under `spec`'s keys (a list element). */
function volumeRecord<P extends string> (spec: VolumeArg<P>): Arg<VolumeArgs<P>, false> {
  return arg<VolumeArgs<P>>(value => value !== null && typeof value === 'object' && namesVolume(value as Record<string, unknown>, spec))
}
function returns<T> (): Returns<T> { return {} }

const keepRules = { last: optional(number), hourly: optional(number), daily: optional(number), weekly: optional(number), monthly: optional(number), yearly: optional(number) }

type VolumeResult = VolumeInfo & Elapsed

export const operations = {
  // the daemon and the pool
  status: { args: {}, result: returns<StatusResult>(), quiet: true },
  stats: { args: {}, result: returns<StatsResult>(), quiet: true },
  progress: { args: {}, result: returns<Progress>(), quiet: true },
  commit: { args: {}, result: returns<Record<string, never>>() },
  sync: { args: {}, result: returns<SealReport & Elapsed>() },
  verify: { args: {}, result: returns<VerifyReport>() },
  gc: { args: { full: optional(boolean) }, result: returns<GcReport>() },
  ls: { args: {}, result: returns<Array<VolumeInfo & { storedBytes: number }>>(), quiet: true },
  du: { args: {}, result: returns<SpaceReport>(), quiet: true },
  info: { args: { image: volume('', 'image') }, result: returns<VolumeFacts>(), quiet: true },
  map: { args: { target: volume('target') }, result: returns<MapResult>(), quiet: true },
  // the namespace
  backup: { args: { source: volume('source'), name: string }, result: returns<VolumeResult>() },
  backupGroup: { args: { sources: listOf(volumeRecord(volume('source'))), names: listOf(string), group: string }, result: returns<{ backups: Array<VolumeInfo & { from: VolumeInfo }> } & Elapsed>() },
  restoreGroup: { args: { group: string, force: optional(boolean) }, result: returns<{ restored: Array<{ restored: VolumeInfo, from: VolumeInfo }> }>() },
  cloneGroup: { args: { group: string, prefix: string }, result: returns<{ clones: VolumeInfo[] }>() },
  clone: { args: { source: volume('source'), name: string }, result: returns<VolumeResult>() },
  restore: { args: { source: volume('source'), target: volume('target'), force: optional(boolean) }, result: returns<{ restored: VolumeInfo, from: VolumeInfo }>() },
  rm: { args: { target: volume('target'), force: optional(boolean) }, result: returns<{ removed: VolumeInfo, stillOpen: boolean }>() },
  cp: { args: { source: volume('source'), name: string }, result: returns<CopyResult>() },
  protect: { args: { target: volume('target'), on: optional(boolean) }, result: returns<VolumeInfo>() },
  note: { args: { target: volume('target'), note: nullable(string) }, result: returns<VolumeInfo>() },
  rename: { args: { target: volume('target'), name: string }, result: returns<VolumeInfo & { from: VolumeInfo }>() },
  promote: { args: { source: volume('source'), name: string }, result: returns<CopyResult>() },
  // transfer (docs/TRANSFER.md): the stream operations' result is their first reply line
  exportStream: { args: { backup: volume('', 'backup'), since: optional(nullable(string)) }, result: returns<StreamHeader>(), stream: true },
  importStream: { args: { header: object<StreamHeader>(), name: string }, result: returns<{ resumedBlocks: number }>(), final: returns<ImportFinish>(), stream: true },
  // a group import: each member's stream staged (received whole, no backup yet), then all made at once
  importStageStream: { args: { header: object<StreamHeader>(), name: string }, result: returns<{ resumedBlocks: number }>(), final: returns<ImportStaged>(), stream: true },
  importGroupFinish: { args: { group: string, keys: listOf(string) }, result: returns<{ backups: Array<VolumeInfo & { uuid: string }> }>() },
  diff: { args: { older: volume('older', 'OLD'), newer: volume('newer', 'NEW') }, result: returns<{ ranges: ByteRange[], pagesRead: number, blockBytes: number, oldSize: number, newSize: number }>(), quiet: true },
  uuid: { args: { image: volume('', 'volume') }, result: returns<{ uuid: string }>(), quiet: true },
  imports: { args: {}, result: returns<Array<ImportRow & { blocks: number }>>(), quiet: true },
  // lazy pulls (volume/lazy.ts): the backup made at once, its blocks sent later by a hydrator
  lazyPullStream: { args: { header: object<StreamHeader>(), name: string, remote: string, manifest: string }, result: returns<{ resumedBlocks: number }>(), final: returns<ImportFinish>(), stream: true },
  hydrateStream: { args: { uuid: string }, result: returns<{ blockBytes: number, remote?: string, manifest?: string, backup: string }>(), stream: true },
  lazyMissing: { args: { uuid: string, hashes: listOf(string) }, result: returns<{ inProgress: boolean, missing: string[] }>(), quiet: true },
  lazyPulls: { args: {}, result: returns<Array<LazyPullProgress & { backup: string, name: string | null }>>(), quiet: true },
  prune: { args: { ...keepRules, match: optional(string), dryRun: optional(boolean) }, result: returns<{ dryRun: boolean, backups: PruneRow[] }>() },
  // remotes (docs/REMOTE.md)
  remoteAdd: { args: { name: string, url: string, endpoint: optional(string), region: optional(string), keyFile: optional(string), keyFingerprint: optional(string) }, result: returns<RemoteDefinition>() },
  remoteRemove: { args: { name: string }, result: returns<{ removed: string }>() },
  remoteList: { args: {}, result: returns<RemoteDefinition[]>() }
} satisfies Record<string, OperationSpec>

export type Operation = keyof typeof operations
/** The operations that carry a stream after their reply line. */
export type StreamOperation = { [Op in Operation]: typeof operations[Op] extends { stream: true } ? Op : never }[Operation]

type VolumeArgs<P extends string> = P extends '' ? { kind: VolumeKind, name: string } : Record<`${P}Kind`, VolumeKind> & Record<`${P}Name`, string>
type UnionToIntersection<U> = (U extends unknown ? (x: U) => void : never) extends (x: infer I) => void ? I : never
type Flatten<T> = { [K in keyof T]: T[K] }
type Specs<Op extends Operation> = typeof operations[Op]['args']
type RequiredKeys<A> = { [K in keyof A]: A[K] extends Arg<unknown, false> ? K : never }[keyof A]
type OptionalKeys<A> = { [K in keyof A]: A[K] extends Arg<unknown, true> ? K : never }[keyof A]
type VolumePrefixes<A> = { [K in keyof A]: A[K] extends VolumeArg<infer P> ? P : never }[keyof A]
type ArgType<S> = S extends Arg<infer T> ? T : never
type VolumesOf<A> = UnionToIntersection<VolumePrefixes<A> extends infer P ? P extends string ? VolumeArgs<P> : never : never>

/** The arguments of `op`, as its entry in the table says. */
export type ArgsOf<Op extends Operation> = Op extends Operation ? [keyof Specs<Op>] extends [never] ? Record<string, never> : Flatten<{ [K in RequiredKeys<Specs<Op>>]: ArgType<Specs<Op>[K]> } & { [K in OptionalKeys<Specs<Op>>]?: ArgType<Specs<Op>[K]> } &
  ([VolumePrefixes<Specs<Op>>] extends [never] ? unknown : VolumesOf<Specs<Op>>)> : never
/** The result of `op` (a stream operation's first reply line). */
export type ResultOf<Op extends Operation> = typeof operations[Op]['result'] extends Returns<infer T> ? T : never
/** The reply line that ends stream operation `op`. */
export type FinalOf<Op extends Operation> = typeof operations[Op] extends { final: Returns<infer T> } ? T : never

export function isOperation (op: unknown): op is Operation {
  return typeof op === 'string' && Object.prototype.hasOwnProperty.call(operations, op)
}

/** The wire keys of a volume argument. */
export function volumeKeys (arg: VolumeArg): { kind: string, name: string } {
  return arg.prefix === '' ? { kind: 'kind', name: 'name' } : { kind: `${arg.prefix}Kind`, name: `${arg.prefix}Name` }
}

function namesVolume (args: Record<string, unknown>, arg: VolumeArg): boolean {
  const keys = volumeKeys(arg)
  return typeof args[keys.kind] === 'string' && typeof args[keys.name] === 'string' && volumeKinds.includes(args[keys.kind] as string)
}

/** Checks that `args` names a volume under `arg`'s keys (a kind and a name); throws INVALID `missing WHAT`. */
export function checkVolumeArg (args: Record<string, unknown>, arg: VolumeArg): void {
  if (!namesVolume(args, arg)) throw invalid(`missing ${arg.volume}`)
}

/**
 * Checks `args` (a request's, untyped) against the table's entry for `op` and returns them typed;
 * throws INVALID `missing KEY` (or `malformed KEY`) for the first that fails.
 */
export function checkArgs<Op extends Operation> (op: Op, args: Record<string, unknown>): ArgsOf<Op> {
  const specs: Record<string, ArgSpec> = operations[op].args
  for (const [key, spec] of Object.entries(specs)) {
    if ('volume' in spec) { checkVolumeArg(args, spec); continue }
    const value = args[key]
    if (value === undefined && spec.optional) continue
    if (!spec.check(value)) throw invalid(value === undefined ? `missing ${key}` : `malformed ${key}`)
  }
  return args as ArgsOf<Op>
}
