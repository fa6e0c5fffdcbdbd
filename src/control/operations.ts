/**
 * The control operations, as one typed table shared by the client (client.ts, which refuses to send
 * what the table does not allow) and the server (server.ts, which checks every request against it
 * before a handler runs). An operation's name is a key of this table: a name the table lacks does not
 * compile on either side, and a handler table (ops-*.ts) must cover exactly these names.
 *
 * Arguments are checked here for their presence and type; what they mean (a volume's kind, a rule's
 * count, a header's fields) is the handlers' to check. A volume travels as two strings, PREFIXKind and
 * PREFIXName (kind and name when the prefix is empty), and is found by the handlers (handler.ts).
 */
import { invalid } from '../errors'

/** A volume argument: `${prefix}Kind` and `${prefix}Name` (`kind`, `name` for ''); `what` names it in errors. */
export interface VolumeArg { volume: string, prefix: string }
export type ArgSpec = 'string' | 'string?' | 'string|null' | 'string|null?' | 'boolean?' | 'number?' | 'list' | 'object' | VolumeArg

export interface OperationSpec {
  args: Record<string, ArgSpec>
  /** Changes nothing: its refusals are not logged by the daemon. */
  quiet?: boolean
  /** Carries a stream after its reply line (server.ts stream mode): export and import. */
  stream?: boolean
}

const volumeKinds = ['disk', 'backup', 'clone']

function volume (prefix: string, what = prefix): VolumeArg { return { volume: what, prefix } }

const keepRules = { last: 'number?', hourly: 'number?', daily: 'number?', weekly: 'number?', monthly: 'number?', yearly: 'number?' } as const

export const operations = {
  // the daemon and the pool
  status: { args: {}, quiet: true },
  stats: { args: {}, quiet: true },
  progress: { args: {}, quiet: true },
  commit: { args: {} },
  sync: { args: {} },
  verify: { args: {} },
  gc: { args: {} },
  ls: { args: {}, quiet: true },
  du: { args: {}, quiet: true },
  info: { args: { image: volume('', 'image') }, quiet: true },
  map: { args: { target: volume('target') }, quiet: true },
  // the namespace
  backup: { args: { source: volume('source'), name: 'string' } },
  backupGroup: { args: { sources: 'list', names: 'list', group: 'string' } },
  restoreGroup: { args: { group: 'string', force: 'boolean?' } },
  cloneGroup: { args: { group: 'string', prefix: 'string' } },
  clone: { args: { source: volume('source'), name: 'string' } },
  restore: { args: { source: volume('source'), target: volume('target'), force: 'boolean?' } },
  rm: { args: { target: volume('target'), force: 'boolean?' } },
  cp: { args: { source: volume('source'), name: 'string' } },
  protect: { args: { target: volume('target'), on: 'boolean?' } },
  note: { args: { target: volume('target'), note: 'string|null' } },
  rename: { args: { target: volume('target'), name: 'string' } },
  promote: { args: { source: volume('source'), name: 'string' } },
  // transfer (issue #12)
  exportStream: { args: { backup: volume('', 'backup'), since: 'string|null?' }, stream: true },
  importStream: { args: { header: 'object', name: 'string' }, stream: true },
  diff: { args: { older: volume('older', 'OLD'), newer: volume('newer', 'NEW') }, quiet: true },
  uuid: { args: { image: volume('', 'volume') }, quiet: true },
  imports: { args: {}, quiet: true },
  // lazy pulls (volume/lazy.ts): the backup made at once, its blocks sent later by a hydrator
  lazyPullStream: { args: { header: 'object', name: 'string', remote: 'string', manifest: 'string' }, stream: true },
  hydrateStream: { args: { uuid: 'string' }, stream: true },
  lazyMissing: { args: { uuid: 'string', hashes: 'list' }, quiet: true },
  lazyPulls: { args: {}, quiet: true },
  prune: { args: { ...keepRules, match: 'string?', dryRun: 'boolean?' } },
  // remotes
  remoteAdd: { args: { name: 'string', url: 'string', endpoint: 'string?', region: 'string?', keyFile: 'string?', keyFingerprint: 'string?' } },
  remoteRemove: { args: { name: 'string' } },
  remoteList: { args: {} }
} satisfies Record<string, OperationSpec>

export type Operation = keyof typeof operations

export function isOperation (op: unknown): op is Operation {
  return typeof op === 'string' && Object.prototype.hasOwnProperty.call(operations, op)
}

/** The wire keys of a volume argument. */
export function volumeKeys (arg: VolumeArg): { kind: string, name: string } {
  return arg.prefix === '' ? { kind: 'kind', name: 'name' } : { kind: `${arg.prefix}Kind`, name: `${arg.prefix}Name` }
}

/** Checks that `args` names a volume under `arg`'s keys (a kind and a name); throws INVALID `missing WHAT`. */
export function checkVolumeArg (args: Record<string, unknown>, arg: VolumeArg): void {
  const keys = volumeKeys(arg)
  if (typeof args[keys.kind] !== 'string' || typeof args[keys.name] !== 'string' || !volumeKinds.includes(args[keys.kind] as string)) throw invalid(`missing ${arg.volume}`)
}

/** Checks `args` against the table's entry for `op`; throws INVALID `missing KEY` (or `malformed KEY`) for the first that fails. */
export function checkArgs (op: Operation, args: Record<string, unknown>): void {
  const specs: Record<string, ArgSpec> = operations[op].args
  for (const [key, spec] of Object.entries(specs)) {
    if (typeof spec === 'object') { checkVolumeArg(args, spec); continue }
    const value = args[key]
    const optional = spec.endsWith('?')
    if (value === undefined && optional) continue
    const ok = spec.startsWith('string|null')
      ? value === null || typeof value === 'string'
      : spec.startsWith('string')
        ? typeof value === 'string'
        : spec === 'boolean?'
          ? typeof value === 'boolean'
          : spec === 'number?'
            ? typeof value === 'number'
            : spec === 'list'
              ? Array.isArray(value)
              : value !== null && typeof value === 'object' && !Array.isArray(value)
    if (!ok) throw invalid(value === undefined ? `missing ${key}` : `malformed ${key}`)
  }
}
