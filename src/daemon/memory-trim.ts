/**
 * Returning the C heap's free memory to the system (docs/PERFORMANCE.md, "The daemon's memory"). A
 * commit's transient buffers (map pages' encodings, catalog.log records, SQLite's statements) and a seal
 * pass's are freed to malloc, which keeps them inside its heap: after a 1 TiB disk was written every
 * 64 MiB the daemon held 160 MiB more, 10 MiB of it live. glibc's malloc_trim(0) gives the free pages
 * back, inside the heap too; the addon runs it in a thread of its own (mallocTrim), so the event loop
 * never waits for it.
 */
import { memoryTrimCheckMs, memoryTrimGrowthBytes } from '../limits'

/**
 * A check to call now and then (daemon.ts, every memoryTrimCheckMs). `work` counts what leaves garbage
 * behind (the pool's commits, which also end every seal pass and gc). Asks `trim` once at the first
 * check that finds no new work after some (a burst of commits ended: what it freed is kept by malloc,
 * and a trim in its middle misses what it frees after), and while work goes on, whenever the resident
 * memory grew by `growth` bytes past its level (measured at the check after the last trim, which runs
 * meanwhile; the lowest seen since). Returns whether it asked.
 */
export function memoryTrimmer (trim: () => void, work: () => number, resident: () => number = () => process.memoryUsage.rss(), growth = memoryTrimGrowthBytes): () => boolean {
  let level = resident()
  let done = work()
  let since = false
  let trimmed = false
  return () => {
    const now = resident()
    const counted = work()
    const busy = counted !== done
    done = counted
    if (trimmed) {
      trimmed = false
      level = now
    } else if (now < level) level = now
    if (busy) since = true
    if (!(since && (!busy || now - level >= growth))) return false
    since = busy
    trim()
    trimmed = true
    return true
  }
}

/** What `vdiskfs status` shows of the trims: how many ended, the last one's time and what it gave back. */
export interface TrimStats { count: number, lastMs: number, lastFreedBytes: number }

/** The addon's calls (fuse3-transport.ts's Fuse3Native). */
interface Trims { mallocTrim: () => number, mallocTrimStats: () => number[] }

let started: Trims | null = null

/** Starts the checks (the daemon's background work): returns their timer. */
export function startMemoryTrims (native: Trims, work: () => number): NodeJS.Timeout {
  started = native
  const check = memoryTrimmer(() => { native.mallocTrim() }, work)
  return setInterval(() => { check() }, memoryTrimCheckMs)
}

/** The trims' figures, or null when none were started in this process. */
export function trimStats (): TrimStats | null {
  if (started === null) return null
  const [count, lastMs, lastFreedBytes] = started.mallocTrimStats()
  return { count, lastMs, lastFreedBytes }
}
