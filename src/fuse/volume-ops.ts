/**
 * What the FUSE operations (fuse3-ops.ts) ask of a volume beyond reads and writes: fallocate's modes and
 * the read-only user.vdiskfs.* attributes, kept apart from the request translation.
 */
import { Pool } from '../volume/pool'
import { Volume } from '../volume/volume'
import { SpaceAccounting } from '../inspect/space'
import { sourceOf } from '../inspect/facts'

/** fallocate(2) mode bits (linux/falloc.h). */
const fallocKeepSize = 0x01
const fallocPunchHole = 0x02
const fallocZeroRange = 0x10

/**
 * fallocate(2) on a volume. PUNCH_HOLE (always with KEEP_SIZE) and ZERO_RANGE discard: what fstrim and
 * blkdiscard send through a loop device. Plain allocation only grows the size: nothing is reserved, so
 * a later write may still get ENOSPC; KEEP_SIZE alone does nothing. Returns null for a mode not offered
 * (the adapter answers ENOTSUP).
 */
export function fallocate (volume: Volume, mode: number, offset: number, length: number): Promise<void> | null {
  const keepSize = (mode & fallocKeepSize) !== 0
  const action = mode & ~fallocKeepSize
  if ((action === fallocPunchHole && keepSize) || action === fallocZeroRange) return volume.discard(offset, length, { grow: !keepSize })
  // extend() compares with the size when it runs: a truncate(end) chosen here could shrink a volume
  // that a write in flight grew past `end` meanwhile.
  if (action === 0) return keepSize ? Promise.resolve() : volume.extend(offset + length)
  return null
}

export const xattrPrefix = 'user.vdiskfs.'
export const xattrNames = ['kind', 'source', 'created', 'size', 'referenced', 'unique'].map(n => xattrPrefix + n)

/**
 * The value of attribute user.vdiskfs.KEY (`key` without the prefix), or undefined when there is none.
 * The space figures may be up to spaceUsageStaleMs old, and wait for a walk of the pool's map pages
 * when they are older (inspect/space.ts: it yields to the event loop, so other requests go on).
 */
export async function xattrValue (pool: Pool, space: SpaceAccounting, volume: Volume, key: string): Promise<string | undefined> {
  switch (key) {
    case 'kind': return volume.kind
    case 'source': return sourceOf(pool, volume) ?? ''
    case 'created': return new Date(volume.createdMs).toISOString()
    case 'size': return String(volume.size)
    case 'referenced': return String((await space.volume(volume, false)).usage.referencedBytes)
    case 'unique': return String((await space.volume(volume, false)).usage.uniqueBytes)
    default: return undefined
  }
}
