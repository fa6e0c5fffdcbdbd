/**
 * Control operations of issue #11: map (a volume's allocation map), cp (a volume to a new disk, O(1))
 * and promote (a clone becomes a disk, O(1)). Like server.ts they only translate: the work is in the
 * volume layer (namespace.ts, allocation.ts).
 */
import { VolumeKind } from '../catalog/catalog'
import { invalid, notFound } from '../errors'
import { Volume } from '../volume/volume'
import { Handler, HandlerContext } from './server'

const dirOfKind: Record<string, string> = { disk: 'disks', backup: 'backups', clone: 'clones' }

/** DIR/NAME for the daemon log, control characters shown as \xHH (a name may hold any but '/' and NUL). */
function named (volume: { kind: string, name: string }): string {
  return `${dirOfKind[volume.kind]}/${volume.name}`.replace(/[\u0000-\u001f\u007f-\u009f]/g, c => `\\x${c.charCodeAt(0).toString(16).padStart(2, '0')}`)
}

export function adminHandlers ({ pool, log }: HandlerContext): Record<string, Handler> {
  /** The visible volume args[KEY + 'Kind'] / args[KEY + 'Name'] names (hidden ones answer to no name). */
  const volumeArg = (args: Record<string, unknown>, key: string): Volume => {
    const kind = args[key + 'Kind']
    const name = args[key + 'Name']
    if (typeof kind !== 'string' || typeof name !== 'string' || !['disk', 'backup', 'clone'].includes(kind)) throw invalid(`missing ${key}`)
    const volume = pool.get(kind as VolumeKind, name)
    if (volume.hidden) throw notFound(`${kind} ${name}`)
    return volume
  }
  const nameArg = (args: Record<string, unknown>): string => {
    if (typeof args.name !== 'string') throw invalid('missing name')
    return args.name
  }
  const elapsedSince = (started: bigint): number => Number(process.hrtime.bigint() - started) / 1e6
  return {
    map: async args => {
      const volume = volumeArg(args, 'target')
      const backing = volume.kind === 'clone' ? pool.liveSource(volume) : undefined
      const ranges = await pool.allocationMap(volume)
      return { size: volume.size, blockBytes: pool.blockBytes, backing: backing === undefined ? null : { kind: backing.kind, name: backing.name }, ranges }
    },
    cp: async args => {
      const started = process.hrtime.bigint()
      const source = volumeArg(args, 'source')
      const copy = await pool.copy(source, nameArg(args))
      const elapsedMs = elapsedSince(started)
      log(`cp: ${named(source)} -> ${named(copy)} (${elapsedMs.toFixed(1)} ms)`)
      return { ...copy.info(), from: source.info(), elapsedMs }
    },
    protect: async args => {
      const volume = volumeArg(args, 'target')
      const on = args.on !== false
      await pool.protect(volume, on)
      log(`${on ? 'protect' : 'unprotect'}: ${named(volume)}`)
      return volume.info()
    },
    note: async args => {
      const volume = volumeArg(args, 'target')
      if (!(args.note === null || typeof args.note === 'string')) throw invalid('missing note')
      await pool.setNote(volume, args.note)
      log(`note: ${named(volume)} ${volume.note === null ? '(cleared)' : `(${Buffer.byteLength(volume.note)} bytes)`}`)
      return volume.info()
    },
    rename: async args => {
      const volume = volumeArg(args, 'target')
      const from = volume.info()
      await pool.renameVolume(volume, nameArg(args))
      log(`rename: ${named(from)} -> ${named(volume)}`)
      return { ...volume.info(), from }
    },
    promote: async args => {
      const started = process.hrtime.bigint()
      const clone = volumeArg(args, 'source')
      const from = clone.info()
      await pool.promote(clone, nameArg(args))
      const elapsedMs = elapsedSince(started)
      log(`promote: ${named(from)} -> ${named(clone)} (${elapsedMs.toFixed(1)} ms)`)
      return { ...clone.info(), from, elapsedMs }
    }
  }
}
