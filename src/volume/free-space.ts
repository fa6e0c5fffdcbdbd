/**
 * Free-space accounting for new data: a cached statfs of the pool's filesystem, refreshed in the
 * background every statfsIntervalMs (or sooner after a quarter of the reserve was claimed), and
 * checked again synchronously before anything is refused. metadataReserveBytes stay free for the
 * catalog, its log and map pages, so a full pool can still commit, remove and gc.
 *
 * Assumes: the figure is advisory (other writers share the filesystem); a write that claimed space
 * may still meet ENOSPC, which the layers below report as NO_SPACE.
 */
import fs from 'node:fs'
import { VdiskError, fromSystemError } from '../errors'
import { metadataReserveBytes, statfsIntervalMs } from '../limits'

/** The pool's filesystem as statfs(2) sees it (what `df` on the mount shows). */
export interface FilesystemStat {
  bsize: number
  blocks: number
  bfree: number
  bavail: number
  files: number
  ffree: number
}

export class FreeSpace {
  private freeBytes = Number.POSITIVE_INFINITY
  private claimedSinceStatfs = 0
  private statfsAtMs = 0
  private statfsRunning = false

  constructor (private readonly dir: string) {}

  /** The pool's filesystem's figures. Errors: IO. */
  async statfs (): Promise<FilesystemStat> {
    try {
      const { bsize, blocks, bfree, bavail, files, ffree } = await fs.promises.statfs(this.dir)
      return { bsize, blocks, bfree, bavail, files, ffree }
    } catch (err) {
      throw fromSystemError(err, `statfs of ${this.dir}`)
    }
  }

  /** Claims room for `bytes` of new data. Throws NO_SPACE when the pool's filesystem is nearly full. */
  claim (bytes: number): void {
    const now = Date.now()
    if (!this.statfsRunning && (now - this.statfsAtMs >= statfsIntervalMs || this.claimedSinceStatfs > metadataReserveBytes / 4)) {
      this.statfsRunning = true
      fs.statfs(this.dir, (err, stat) => {
        this.statfsRunning = false
        if (err !== null) return
        this.freeBytes = stat.bavail * stat.bsize
        this.claimedSinceStatfs = 0
        this.statfsAtMs = Date.now()
      })
    }
    if (this.freeBytes - this.claimedSinceStatfs - bytes < metadataReserveBytes) {
      // Before refusing, look again (a statfs of a local directory; only on this rare path): space
      // may have come back since the cached figure, from gc or from outside.
      try {
        const stat = fs.statfsSync(this.dir)
        this.freeBytes = stat.bavail * stat.bsize
        this.claimedSinceStatfs = 0
        this.statfsAtMs = Date.now()
      } catch {}
    }
    if (this.freeBytes - this.claimedSinceStatfs - bytes < metadataReserveBytes) {
      throw new VdiskError('NO_SPACE', `the pool's filesystem is full (less than ${metadataReserveBytes >> 20} MiB free, kept for metadata)`)
    }
    this.claimedSinceStatfs += bytes
  }
}
