/**
 * Control operations of issue #11: map (a volume's allocation map), cp (a volume to a new disk, O(1))
 * and promote (a clone becomes a disk, O(1)). Like server.ts they only translate: the work is in the
 * volume layer (namespace.ts, allocation.ts).
 */
import { HandlerContext, Handlers, elapsedSince, named, volumeArg } from './handler'

export function adminHandlers ({ pool, log }: HandlerContext) {
  return {
    map: async args => {
      const volume = volumeArg(pool, 'map', args, 'target')
      const backing = volume.kind === 'clone' ? pool.liveSource(volume) : undefined
      const ranges = await pool.allocationMap(volume)
      return { size: volume.size, blockBytes: pool.blockBytes, backing: backing === undefined ? null : { kind: backing.kind, name: backing.name }, ranges }
    },
    cp: async args => {
      const started = process.hrtime.bigint()
      const source = volumeArg(pool, 'cp', args, 'source')
      const copy = await pool.copy(source, args.name)
      const elapsedMs = elapsedSince(started)
      log(`cp: ${named(source)} -> ${named(copy)} (${elapsedMs.toFixed(1)} ms)`)
      return { ...copy.info(), from: source.info(), elapsedMs }
    },
    protect: async args => {
      const volume = volumeArg(pool, 'protect', args, 'target')
      const on = args.on !== false
      await pool.protect(volume, on)
      log(`${on ? 'protect' : 'unprotect'}: ${named(volume)}`)
      return volume.info()
    },
    note: async args => {
      const volume = volumeArg(pool, 'note', args, 'target')
      await pool.setNote(volume, args.note)
      log(`note: ${named(volume)} ${volume.note === null ? '(cleared)' : `(${Buffer.byteLength(volume.note)} bytes)`}`)
      return volume.info()
    },
    rename: async args => {
      const volume = volumeArg(pool, 'rename', args, 'target')
      const from = volume.info()
      await pool.renameVolume(volume, args.name)
      log(`rename: ${named(from)} -> ${named(volume)}`)
      return { ...volume.info(), from }
    },
    promote: async args => {
      const started = process.hrtime.bigint()
      const clone = volumeArg(pool, 'promote', args, 'source')
      const from = clone.info()
      await pool.promote(clone, args.name)
      const elapsedMs = elapsedSince(started)
      log(`promote: ${named(from)} -> ${named(clone)} (${elapsedMs.toFixed(1)} ms)`)
      return { ...clone.info(), from, elapsedMs }
    }
  } satisfies Handlers
}
