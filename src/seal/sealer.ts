/**
 * Sealing: moves blocks from delta extents into the chunk store, in the background. For each frozen
 * extent (and each active one past its size or idle limit, after rotating it): read the slots some
 * map still references, have the workers zero-check, hash and compress them in batches, deduplicate
 * by hash across the pool, append new chunks to a pack, make the packs durable and index them, repoint
 * the maps, commit, and only then delete the extent.
 *
 * A kill at any point leaves either the old slots or the new chunks referenced, both durable; chunks
 * indexed but never referenced are garbage for gc. Reads and writes go on while it runs: the maps
 * change in one synchronous step, and only entries that still name the old slot are repointed.
 *
 * A partial slot (issue #10: only the sectors written, over a chunk) is sealed merged: the main thread
 * reads its sectors (checked) and the chunk underneath (verified) into the slab, and the workers hash
 * and compress the whole block from there. The new chunk replaces both; the old one stays for gc.
 */
import { DeltaExtent } from '../extent/delta-extent'
import { chunkEntry, entryChunkId, entryKind, entryKindChunk } from '../format/map-format'
import { extentSectorBytes, sumOffset } from '../format/extent-format'
import { sealBatchBlocks, sealCommitExtents, sealIntervalMs } from '../limits'
import { Pool } from '../volume/pool'
import { forEachLimited } from '../limited'
import { hashBytes, hashOffset, inputOffset, outputOffset } from '../../workers/protocol'

export interface SealReport {
  extentsSealed: number
  blocksSealed: number
  zeroBlocks: number
  dedupedBlocks: number
  newChunks: number
  rawBytes: number
  storedBytes: number
  /** Extents that could not be sealed (damaged or unreadable), with why; their data stays where it is. */
  failed: string[]
}

/** A seal pass stopped because the pool is closing; its extent is untouched. */
class Cancelled extends Error {
  constructor () { super('cancelled: the pool is closing') }
}

export function emptyReport (): SealReport {
  return { extentsSealed: 0, blocksSealed: 0, zeroBlocks: 0, dedupedBlocks: 0, newChunks: 0, rawBytes: 0, storedBytes: 0, failed: [] }
}

export class Sealer {
  private timer: NodeJS.Timeout | null = null
  private running: Promise<SealReport> | null = null
  /** Extents that failed to seal: the background passes skip them until an explicit sync retries. */
  private readonly failing = new Set<number>()
  /** Progress of the pass in flight, for callers that show it. */
  progress = { done: 0, total: 0 }

  constructor (private readonly pool: Pool, private readonly log: (message: string) => void) {}

  start (): void {
    this.timer = setInterval(() => {
      if (this.running === null) this.sealPending(false).catch(err => this.log(`sealing failed: ${(err as Error).message}`))
    }, sealIntervalMs)
    this.timer.unref()
  }

  stop (): void {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
  }

  /**
   * Seals every frozen extent, after rotating active ones that are idle or big (`all`: every active
   * extent with data, which is what `vdiskfs sync` asks for). Passes do not overlap.
   */
  async sealPending (all: boolean): Promise<SealReport> {
    while (this.running !== null) await this.running.catch(() => {})
    const run = this.pool.exclusive(async () => {
      const report = emptyReport()
      await this.pool.freezeForSealing(all)
      const extents = this.pool.frozenExtents().filter(id => all || (!this.failing.has(id) && this.pool.coldEnough(id)))
      this.progress = { done: 0, total: extents.length }
      // Extents repointed and waiting for the commit after which no map names them: one commit for up
      // to sealCommitExtents of them, so a map page that names several (a page copied by backups and
      // clones carries its entries into every copy) is written once per commit, not once per extent.
      const repointed: number[] = []
      const settle = async (): Promise<void> => {
        if (repointed.length === 0) return
        await this.pool.commit()
        for (const id of repointed.splice(0)) {
          await this.pool.dropExtent(id)
          report.extentsSealed++
        }
      }
      for (const extentId of extents) {
        if (this.pool.closing) break
        try {
          await this.sealExtent(extentId, report)
          repointed.push(extentId)
          if (repointed.length >= sealCommitExtents) await settle()
          this.failing.delete(extentId)
        } catch (err) {
          if (err instanceof Cancelled) break
          // Space may run out, or the extent may be damaged: its blocks stay readable where they are
          // (or fail with EIO), and the next pass tries again.
          if (!this.failing.has(extentId)) this.log(`sealing extent ${extentId} failed: ${(err as Error).message}`)
          this.failing.add(extentId)
          report.failed.push(`extent ${extentId}: ${(err as Error).message}`)
        }
        this.progress.done++
      }
      // A closing pool's last commit takes the repointed maps; their extents, unreferenced, go at the next pass.
      if (!this.pool.closing) {
        try {
          await settle()
        } catch (err) {
          this.log(`sealing: the commit after ${repointed.length} extents failed: ${(err as Error).message}`)
          report.failed.push(`commit: ${(err as Error).message}`)
        }
      }
      if (report.extentsSealed > 0) {
        this.log(`sealed ${report.extentsSealed} extents: ${report.blocksSealed} blocks, ${report.zeroBlocks} zero, ${report.dedupedBlocks} deduplicated, ` +
          `${report.newChunks} new chunks, ${report.rawBytes} -> ${report.storedBytes} bytes`)
      }
      return report
    })
    this.running = run
    try { return await run } finally { this.running = null }
  }

  private async sealExtent (extentId: number, report: SealReport): Promise<void> {
    const pool = this.pool
    const blockBytes = pool.blockBytes
    const slots = pool.referencedSlots(extentId)
    const mapping = new Map<number, number>()
    if (slots.length > 0) {
      let extent = await pool.extents.get(extentId) // checks the extent's header before any of it is sealed
      // A suspect extent (written when the pool stopped uncleanly) gets its checksums back first.
      if (pool.extents.suspect.has(extentId)) await pool.extents.recoverSuspect(extentId, slots)
      const checked = pool.extents.checked(extent)
      // The workers read through this descriptor; it stays open until the pass is done with it.
      // eslint-disable-next-line require-atomic-updates -- extent is a local of this call: the pinned one replaces it, and nothing else assigns it
      extent = await pool.extents.pin(extent)
      const pinned = extent
      const extentFile = pool.extents.file(extentId)
      const workers = pool.workers
      const partial = pool.extents.partialSlots(extentId, slots)
      const whole = slots.filter(slot => !partial.has(slot))
      const merged = slots.filter(slot => partial.has(slot))
      const batches: Array<{ slots: number[], partial: boolean }> = []
      for (let i = 0; i < whole.length; i += sealBatchBlocks) batches.push({ slots: whole.slice(i, i + sealBatchBlocks), partial: false })
      for (let i = 0; i < merged.length; i += sealBatchBlocks) batches.push({ slots: merged.slice(i, i + sealBatchBlocks), partial: true })
      // Keep every worker busy: a few batches in flight, bounded by the slab's slots.
      const inFlight = Math.max(2, workers.threads * 2)
      const runBatch = async ({ slots: batch, partial: merging }: { slots: number[], partial: boolean }): Promise<void> => {
        const slabSlots = await workers.slots.acquireMany(batch.length)
        try {
          if (merging) {
            for (let i = 0; i < batch.length; i++) {
              const block = await this.mergedBlock(pinned, batch[i], partial.get(batch[i]) ?? null)
              const at = inputOffset(workers.config, slabSlots[i])
              block.copy(workers.slab, at)
            }
          }
          // The worker reads whole slots from the extent itself: the main thread only hands out numbers.
          const result = merging ? await workers.seal({ slots: slabSlots, length: blockBytes }) : await workers.seal({ slots: slabSlots, length: blockBytes, source: {
              fd: pinned.fd,
              file: extentFile,
              offsets: batch.map(slot => pool.extents.slotPosition(extent, slot)),
              // The worker checks every sector against the extent's table before it hashes the block.
              sums: checked ? batch.map(slot => sumOffset(slot, 0, blockBytes)) : undefined
            }
          })
          if (result.error !== undefined) throw new Error(`seal worker: ${result.error}`)
          for (let i = 0; i < batch.length; i++) {
            const outcome = result.blocks[i]
            report.blocksSealed++
            report.rawBytes += blockBytes
            if (outcome.zero) { mapping.set(batch[i], 0); report.zeroBlocks++; continue }
            const hashAt = hashOffset(workers.config, slabSlots[i])
            const hash = Buffer.from(workers.slab.subarray(hashAt, hashAt + hashBytes))
            const payload = outcome.compressedBytes > 0
              ? workers.slab.subarray(outputOffset(workers.config, slabSlots[i]), outputOffset(workers.config, slabSlots[i]) + outcome.compressedBytes)
              : workers.slab.subarray(inputOffset(workers.config, slabSlots[i]), inputOffset(workers.config, slabSlots[i]) + blockBytes)
            pool.claimSpace(payload.length)
            const { row, isNew } = await pool.chunks.store(hash, payload, blockBytes, outcome.compressedBytes > 0)
            mapping.set(batch[i], chunkEntry(row.id))
            if (!isNew) { report.dedupedBlocks++; continue }
            report.newChunks++
            report.storedBytes += row.storedBytes
          }
        } finally {
          for (const s of slabSlots) workers.slots.release(s)
        }
      }
      // A failure (or a close) stops every lane from taking another batch; the pass then waits for
      // the batches in flight to settle before it indexes or abandons what they stored.
      let stop: unknown = null
      try {
        await forEachLimited(batches, inFlight, async batch => {
          if (pool.closing) throw new Cancelled()
          await runBatch(batch)
        })
      } catch (err) {
        stop = err
      } finally {
        pool.extents.unpin(pinned)
      }
      if (stop !== null) {
        // What was stored is indexed if it can be made durable (harmless garbage for gc), else forgotten.
        await pool.chunks.index().catch(() => {})
        throw stop
      }
      await pool.chunks.index()
      if (pool.closing) throw new Cancelled()
      pool.repoint(extentId, mapping)
    }
  }

  /**
   * Partial slot `slot` of `extent` merged with the chunk under it (`base`): its written sectors
   * checked, the chunk verified. Throws CORRUPT (a damaged sector, base entry or chunk) or IO.
   */
  private async mergedBlock (extent: DeltaExtent, slot: number, base: number | null): Promise<Buffer> {
    const pool = this.pool
    const block = Buffer.alloc(pool.blockBytes)
    const unwritten = await pool.extents.read(extent, slot, 0, block)
    if (unwritten.length === 0) return block
    if (base === null || entryKind(base) !== entryKindChunk) throw new Error(`delta extent ${extent.id} slot ${slot}: its base entry fails its check`)
    const under = Buffer.alloc(pool.blockBytes)
    await pool.chunks.read(entryChunkId(base), 0, under, `delta extent ${extent.id} slot ${slot} (the chunk under its partial slot)`)
    for (const sector of unwritten) under.copy(block, sector * extentSectorBytes, sector * extentSectorBytes, (sector + 1) * extentSectorBytes)
    return block
  }
}
