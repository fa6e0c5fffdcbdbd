/**
 * copyRange: copy_file_range(2) between two volumes of a pool (or within one). Whole blocks are shared,
 * as `vdiskfs cp` shares a whole image: the target's map takes the source's entries (delta slots,
 * chunks, holes), so a copy costs map pages, not data, and the blocks are stored once. What is not a
 * whole block at the same offset within a block on both sides is copied through read and write.
 *
 * Why sharing is safe (docs/ARCHITECTURE.md): a map entry names where a block's bytes are, wherever the
 * block is (a partial slot records the chunk it was written over in its own extent), so the same entry
 * reads the same bytes in any volume at any block. What must not happen is a slot changed in place while
 * two maps read it: only a volume's writable extents are written in place, so when a shared entry names
 * one of the source's, the source's writable extents are frozen first (as a backup does), and its later
 * writes go to new slots. The target overwrites in place only its own writable extents, which hold no
 * shared slot. Sealing repoints every map's entries naming a slot, so shared entries follow; gc marks
 * from every map.
 *
 * Concurrency: both volumes' gates are closed for the moment of the share (writes in flight drain,
 * new ones wait), in volume id order so that two copies in opposite directions cannot wait for each
 * other; the volumes are re-checked after the wait (removed: NOT_FOUND), the source's size too.
 * Durability: as for writes, the target's new entries are committed by its next fsync (or the
 * background commit); the source's slots they name are synced by that same commit first.
 */
import { readOnly, notFound } from '../errors'
import { entryExtentId, entryKind, entryKindDelta } from '../format/map-format'
import { copyBytesMax, copyPieceBytes, copySharedBlocksMax } from '../limits'
import { PoolState } from './pool-state'
import { Volume } from './volume'

/** What copyRange did: bytes copied in all, and of them the bytes shared as whole blocks. */
export interface RangeCopy {
  bytes: number
  sharedBytes: number
}

/**
 * Copies up to `length` bytes of `source` at `from` to `target` at `to`, growing the target as a write
 * would; returns fewer bytes at the source's end, or when a call's bound is reached (the caller asks
 * again). The ranges must not overlap when source and target are one volume (the kernel refuses that).
 * Errors: READ_ONLY for a backup target, NOT_FOUND for a volume removed meanwhile, and what reads and
 * writes throw (EIO for damage).
 */
export async function copyRange (state: PoolState, source: Volume, target: Volume, from: number, to: number, length: number): Promise<RangeCopy> {
  if (target.kind === 'backup') throw readOnly(`backup ${target.name}`)
  const blockBytes = state.blockBytes
  let total = Math.max(0, Math.min(length, source.size - from))
  if (total === 0) return { bytes: 0, sharedBytes: 0 }
  if (from % blockBytes !== to % blockBytes) {
    total = Math.min(total, copyBytesMax)
    return { bytes: await copyBytes(source, target, from, to, total), sharedBytes: 0 }
  }
  const head = Math.min(total, (blockBytes - from % blockBytes) % blockBytes)
  const blocks = Math.min(Math.floor((total - head) / blockBytes), copySharedBlocksMax)
  let done = 0
  if (head > 0) {
    done = await copyBytes(source, target, from, to, head)
    if (done < head) return { bytes: done, sharedBytes: 0 }
  }
  let sharedBytes = 0
  if (blocks > 0) {
    const shared = await shareBlocks(state, source, target, (from + head) / blockBytes, (to + head) / blockBytes, blocks)
    sharedBytes = shared * blockBytes
    done += sharedBytes
    if (shared < blocks) return { bytes: done, sharedBytes }
  }
  // The tail only when the call's bound did not stop the blocks short of it.
  const tail = blocks === Math.floor((total - head) / blockBytes) ? total - head - blocks * blockBytes : 0
  if (tail > 0) done += await copyBytes(source, target, from + done, to + done, tail)
  return { bytes: done, sharedBytes }
}

/** Copies `length` bytes through read and write in bounded pieces; fewer at the source's end. */
async function copyBytes (source: Volume, target: Volume, from: number, to: number, length: number): Promise<number> {
  const piece = Buffer.allocUnsafe(Math.min(copyPieceBytes, length))
  let done = 0
  while (done < length) {
    const want = Math.min(piece.length, length - done)
    const got = await source.read(piece.subarray(0, want), from + done)
    if (got <= 0) break
    // A copy of the bytes: the write may hold on to its buffer past this piece.
    await target.write(Buffer.from(piece.subarray(0, got)), to + done)
    done += got
  }
  return done
}

/**
 * Points `count` blocks of `target` from `targetBlock` at what `source`'s blocks from `sourceBlock`
 * hold; returns the blocks shared (fewer when the source shrank meanwhile).
 */
async function shareBlocks (state: PoolState, source: Volume, target: Volume, sourceBlock: number, targetBlock: number, count: number): Promise<number> {
  // A target pending with a lazy pull (a clone of its backup): the blocks' batches first, so the apply
  // never sets its entries over the shared ones (a mapped block stays mapped: nothing to check after).
  if (target.pendingMap !== null) await target.owned(targetBlock * state.blockBytes, count * state.blockBytes)
  const gates = source === target ? [source] : [source, target].sort((a, b) => a.id - b.id)
  const paused: Volume[] = []
  try {
    for (const volume of gates) {
      await volume.pause()
      paused.push(volume)
    }
    // After the waits: both still in the pool (a removed volume still open stays, hidden), and the
    // source's size decides how many whole blocks it still has.
    for (const volume of gates) if (state.volumes.get(volume.id) !== volume) throw notFound(volume.label)
    const n = Math.max(0, Math.min(count, Math.floor(source.size / state.blockBytes) - sourceBlock))
    if (n === 0) return 0
    const entries: number[] = new Array(n)
    let freeze = false
    for (let i = 0; i < n; i++) {
      const entry = source.map.get(sourceBlock + i)
      entries[i] = entry
      if (entryKind(entry) === entryKindDelta && source.writableExtents.has(entryExtentId(entry))) freeze = true
    }
    if (freeze) state.freezeActiveExtent(source)
    target.adoptEntries(targetBlock, entries)
    return n
  } finally {
    for (const volume of paused.reverse()) volume.resume()
  }
}
