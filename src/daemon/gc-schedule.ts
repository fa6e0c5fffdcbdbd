/**
 * When the daemon's background gc runs (daemon.ts, startBackground): after a change it has not seen,
 * never while one is in flight, and after a gc that took T not before gcRestFactor x T has passed
 * since it ended, so that gc's share of the time stays below 1 / (1 + gcRestFactor) however long a
 * gc takes (issue #21: a gc walked every distinct map page, minutes with 10,000 backups of a 1 TiB
 * disk; started every gcIntervalMs regardless, they queued behind each other and ran all the time.
 * Its mark now reads what the page store learnt of each page, but the first gc of a process, and a
 * pool whose pages' references exceed pageRefsBytesMax, still load pages).
 * `vdiskfs gc` is not held by it.
 */
import { gcRestFactor } from '../limits'

export class GcSchedule {
  private running = false
  private lastEndMs = Number.NEGATIVE_INFINITY
  private lastTookMs = 0
  private seenGeneration: number

  /** `seenGeneration`: the pool's generation a gc at start has covered already (-1: none ran). */
  constructor (seenGeneration: number, private readonly restFactor = gcRestFactor) {
    this.seenGeneration = seenGeneration
  }

  /** Whether a background gc is due now, for a pool at `generation`; if so it counts as started. */
  start (nowMs: number, generation: number): boolean {
    if (this.running || generation === this.seenGeneration) return false
    if (nowMs - this.lastEndMs < this.restFactor * this.lastTookMs) return false
    this.running = true
    this.seenGeneration = generation
    return true
  }

  /** The gc started at `startedMs` ended (done or failed) at `nowMs`. */
  ended (startedMs: number, nowMs: number): void {
    this.running = false
    this.lastEndMs = nowMs
    this.lastTookMs = nowMs - startedMs
  }
}
