/**
 * A commit as soon as many map pages are dirty, besides the one every commitIntervalMs (limits.ts,
 * commitDirtyPagesMax): a commit encodes every dirty page and copies it into catalog.log and the catalog
 * at once, so what it holds in memory, and its synchronous snapshot step, grow with the pages it carries;
 * writes scattered over a 1 TiB disk dirty 4,096 of them (128 MiB of entries) within one interval
 * (docs/PERFORMANCE.md, "Peak RSS"). The daemon calls the returned check every commitPressureCheckMs.
 *
 * One commit of its own at a time, and the next not before commitPressureSpacingMs after it ended: random
 * writes over more pages than the bound would otherwise commit back to back, each writing its pages
 * whole. A failed commit is logged, as the periodic one is; the next fsync reports it.
 */
import { commitDirtyPagesMax, commitPressureSpacingMs } from '../limits'
import { Pool } from '../volume/pool'

export interface PressureHooks {
  /** Takes the fast path's first writes answered so far into the maps (their pages become dirty). */
  settle: () => void
  /** Volumes the fast path wrote natively: their mtime and row. */
  collectWrites: () => void
  log: (message: string) => void
}

/** The check; it resolves its commit's promise for tests (null when it started none). */
export function commitPressure (pool: Pool, hooks: PressureHooks, pagesMax = commitDirtyPagesMax, spacingMs = commitPressureSpacingMs): () => Promise<void> | null {
  let running = false
  let endedMs = -Infinity
  return () => {
    if (running || performance.now() - endedMs < spacingMs) return null
    hooks.settle()
    if (pool.commitStats().dirtyPages < pagesMax) return null
    running = true
    hooks.collectWrites()
    return pool.commit()
      .catch(err => hooks.log(`commit of ${pagesMax} or more dirty map pages failed: ${(err as Error).message}`))
      .finally(() => { running = false; endedMs = performance.now() })
  }
}
