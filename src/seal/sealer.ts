/**
 * Sealing: moves blocks from delta extents into the chunk store, in the background. A pass freezes
 * the active extents that are idle or big (or every one with data, for `vdiskfs sync`) and seals each
 * frozen extent through the pool (volume/seal-extent.ts does the work on one extent: ingest and
 * repoint). One commit then settles up to sealCommitExtents repointed extents, after which they are
 * dropped: a map page naming several of them (backups and clones copy pages with their entries) is
 * written once per commit, not once per extent. An extent that fails is skipped by the background
 * passes until an explicit sync.
 */
import { sealCommitExtents, sealIntervalMs } from '../limits'
import { Pool } from '../volume/pool'
import { SealCancelled, SealReport, emptyReport } from '../volume/seal-extent'

export { SealReport, emptyReport } from '../volume/seal-extent'

export class Sealer {
  private timer: NodeJS.Timeout | null = null
  private running: Promise<SealReport> | null = null
  /** Extents that failed to seal: the background passes skip them until an explicit sync retries. */
  private readonly failing = new Set<number>()
  /** Test seam: run after each extent is sealed (repointed, not settled yet); the pass waits for it. */
  onExtentSealed: (() => Promise<void>) | null = null
  /** Progress of the pass in flight, for callers that show it. */
  progress = { done: 0, total: 0 }
  /** Whether a seal pass is running (the daemon's trace of a backup says what ran beside it). */
  get busy (): boolean { return this.running !== null }

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
      if (extents.length > 0) await this.pool.learnExtentNames()
      // Extents repointed and waiting for the commit after which no map names them.
      const repointed: number[] = []
      const settle = async (): Promise<void> => {
        if (repointed.length === 0) return
        await this.pool.settleSealed(repointed.splice(0), report)
      }
      // Extents not reached when the pool closes (vdiskfs sync then says it was cut short).
      let left = 0
      for (const extentId of extents) {
        if (this.pool.closing) { left = extents.length - this.progress.done; break }
        try {
          await this.pool.sealExtent(extentId, report)
          repointed.push(extentId)
          if (this.onExtentSealed !== null) await this.onExtentSealed()
          if (repointed.length >= sealCommitExtents) await settle()
          this.failing.delete(extentId)
        } catch (err) {
          if (err instanceof SealCancelled) { left = extents.length - this.progress.done; break }
          // Space may run out, or the extent may be damaged: its blocks stay readable where they are
          // (or fail with EIO), and the next pass tries again.
          if (!this.failing.has(extentId)) this.log(`sealing extent ${extentId} failed: ${(err as Error).message}`)
          this.failing.add(extentId)
          report.failed.push(`extent ${extentId}: ${(err as Error).message}`)
        }
        this.progress.done++
      }
      // eslint-disable-next-line require-atomic-updates -- the report is this pass's own: no other code writes extentsLeft
      report.extentsLeft = left
      // A closing pool's last commit takes the repointed maps; their extents, then unreferenced, go at
      // the next gc.
      if (!this.pool.closing) {
        try {
          await settle()
        } catch (err) {
          this.log(`sealing: the commit after ${repointed.length} repointed extents failed: ${(err as Error).message}`)
          report.failed.push(`commit: ${(err as Error).message}`)
        }
      }
      if (report.extentsSealed > 0) {
        this.log(`sealed ${report.extentsSealed} extents: ${report.blocksSealed} blocks, ${report.zeroBlocks} zero, ${report.dedupedBlocks} deduplicated, ` +
          `${report.newChunks} new chunks, ${report.rawBytes} -> ${report.storedBytes} bytes`)
      }
      return report
    }, 'seal')
    this.running = run
    try { return await run } finally { this.running = null }
  }
}
