/**
 * The one way blocks become chunks (issue #19): the workers zero-check, hash and compress a batch
 * (stored raw unless compression saves 1/8, workers/protocol.ts worthCompressing), the main thread
 * claims the space and stores each block in the chunk store, which deduplicates by hash across the
 * pool and appends the new ones to a pack. Sealing (src/seal/sealer.ts) and import
 * (src/volume/import.ts) run their batches through it; a pull from a remote should too.
 *
 * Durability: what a pass stores is indexed (packs fdatasynced, then the index rows) by run() once its
 * batches are done, or, when one failed, indexed if it can be (harmless garbage for gc) and otherwise
 * forgotten: the catalog never names a chunk whose bytes are not durable.
 */
import { ChunkStore } from './chunk-store'
import { WorkerPool } from './worker-pool'
import { SealTask } from '../../workers/protocol'
import { forEachLimited } from '../limited'
import { VdiskError } from '../errors'

/** What became of one block: a hole (all zeros), or a chunk, new or found already stored. */
export type Ingested = { zero: true } | { zero: false, chunkId: number, hash: Buffer, isNew: boolean, storedBytes: number }

/**
 * Where a batch's blocks come from: buffers the main thread fills into the slab (`fill(i, region)`
 * writes the i-th block into `region`; or, returning a length n > 0, a zstd frame of n bytes holding it,
 * which the workers decompress and check, and which is stored as it came: a pull's chunks, not
 * compressed again), or `source`, a file the worker reads the blocks from itself.
 */
export type IngestInput = { count: number, fill: (i: number, region: Buffer) => Promise<number | void> | number | void } | { count: number, source: NonNullable<SealTask['source']> }

export class Ingest {
  constructor (
    private readonly workers: WorkerPool,
    private readonly chunks: ChunkStore,
    private readonly blockBytes: number,
    /** Takes the space a new chunk may need before it is appended (free-space.ts); throws NO_SPACE. */
    private readonly claimSpace: (bytes: number) => void
  ) {}

  /** How many batches a pass keeps in flight: every worker busy, bounded by the slab's slots. */
  get lanes (): number { return Math.max(2, this.workers.threads * 2) }

  /**
   * Turns one batch of whole blocks into chunk entries, in order. `check(i, hash)`, when given, sees
   * each non-zero block's hash before it is stored (an import checks the stream's ids) and throws to
   * refuse it; `refuse(i, why)` makes the error for a frame that does not open (default: IO). Either
   * stops the batch at that block (those before it are stored). Throws IO for what the workers report
   * (prefixed with `what`), NO_SPACE or IO from the chunk store. `urgent`: the workers at the daemon's
   * priority, not the sealing threads' (worker-pool.ts), for blocks someone waits for.
   */
  async batch (input: IngestInput, what: string, check?: (i: number, hash: Buffer) => void, refuse?: (i: number, why: string) => Error, urgent = false): Promise<Ingested[]> {
    const blockBytes = this.blockBytes
    return await this.workers.lease(input.count, async lease => {
      let result
      // Per block: the length of the zstd frame its fill wrote (0: the raw block).
      let frames: number[] | undefined
      if ('source' in input) result = await lease.seal(blockBytes, input.source)
      else {
        for (let i = 0; i < input.count; i++) {
          const frameBytes = await input.fill(i, lease.input(i, blockBytes))
          if (typeof frameBytes === 'number' && frameBytes > 0) (frames ??= new Array<number>(input.count).fill(0))[i] = frameBytes
        }
        result = await lease.seal(blockBytes, undefined, frames)
      }
      if (result.error !== undefined) throw new VdiskError('IO', `${what}: ${result.error}`)
      const out: Ingested[] = []
      for (let i = 0; i < input.count; i++) {
        const outcome = result.blocks[i]
        // A frame that did not open is refused where it stands, as a block the check refuses: the blocks
        // before it are stored, it and those after it are not.
        if (outcome.error !== undefined) throw refuse?.(i, outcome.error) ?? new VdiskError('IO', `${what}: block ${i} of the batch: ${outcome.error}`)
        if (outcome.zero) { out.push({ zero: true }); continue }
        const hash = lease.hash(i)
        check?.(i, hash)
        const compressed = outcome.compressedBytes > 0
        // A frame is stored as it came (the slot's input); a block the worker compressed, from its output.
        const framed = (frames?.[i] ?? 0) > 0
        const payload = framed ? lease.input(i, outcome.compressedBytes) : compressed ? lease.output(i, outcome.compressedBytes) : lease.input(i, blockBytes)
        this.claimSpace(payload.length)
        const { row, isNew } = await this.chunks.store(hash, payload, blockBytes, compressed)
        out.push({ zero: false, chunkId: row.id, hash, isNew, storedBytes: row.storedBytes })
      }
      return out
    }, urgent)
  }

  /**
   * Runs `work` on every batch, `lanes` at a time, then indexes what they stored. The first failure
   * stops new batches; those in flight settle, what was stored is indexed if it can be (else
   * forgotten), and the failure is thrown.
   */
  async run<T> (batches: T[], work: (batch: T) => Promise<void>): Promise<void> {
    try {
      await forEachLimited(batches, this.lanes, work)
    } catch (err) {
      await this.chunks.index().catch(() => {})
      throw err
    }
    await this.chunks.index()
  }
}
