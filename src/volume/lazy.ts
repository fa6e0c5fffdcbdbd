/**
 * Lazy pulls (issue #22, docs/REMOTE.md "Lazy pull"): a backup pulled from a remote store that exists at
 * once and fills in behind the readers. Its blocks the pool lacks are absent chunks (catalog.ts
 * absentPackId): chunk rows with their hash and no place, so the backup's map, its clones, range copies
 * and the journal all see ordinary chunk entries. The daemon never talks to the store (it holds no
 * credentials nor key): a hydrator process (the CLI's `pull --lazy`) connects to the control socket,
 * hears which chunks readers wait for (want), and sends blocks, which the chunk store files under the
 * absent chunk's id once they check against its hash (chunk-store.ts store/index).
 *
 * Durable state (catalog): lazy_pulls (one row per pull: its backup's uuid, the remote and manifest it
 * comes from, how many chunks it lacked) and lazy_chunks (the chunks each pull still lists). A fill
 * takes the chunk off every list; a pull whose list is empty is done, its row goes, and its backup is
 * an ordinary local one. A daemon killed between a fill and the list's update leaves a listed chunk
 * that is here: open() takes it off.
 *
 * Readers wait in wait(), bounded by waitMs (VDISKFS_LAZY_WAIT_MS, 30 s by default): then IO (EIO to
 * the FUSE reader) and a log line naming the remote. Nothing waits on the event loop: a wait is a
 * promise and a timer.
 */
import { VdiskError } from '../errors'
import { Catalog, LazyPullRow } from '../catalog/catalog'
import { ChunkStore } from '../chunk/chunk-store'

/** How long a read of an absent chunk waits for it by default. */
export const lazyWaitMsDefault = 30_000

/** A hydrator connected for a pull: the daemon tells it which chunks readers wait for. */
export interface HydratorSession { want: (hash: Buffer) => void }

interface Waiter { promise: Promise<void>, resolve: () => void, waiting: number }

/** A pull's progress; `pending`: its references are still being applied (chunks and missing count them all, an upper bound). */
export interface LazyPullProgress { uuid: string, remote: string, manifest: string, chunks: number, missing: number, hydrator: boolean, startedMs: number, pending: boolean }

export class LazyPulls {
  private readonly pulls = new Map<string, LazyPullRow>()
  /** Per pull, the chunks still on its list. */
  private readonly missing = new Map<string, number>()
  private readonly waiters = new Map<number, Waiter>()
  private readonly sessions = new Map<string, HydratorSession>()
  /**
   * Pulls whose references are still being applied (lazy-refs.ts): their lists are not whole yet, so
   * none of them is done (a list down to 0 meanwhile counts again at settled()).
   */
  private readonly pending = new Map<string, number>()
  readonly waitMs: number

  constructor (
    private readonly catalog: Catalog,
    private readonly chunks: ChunkStore,
    private readonly log: (message: string) => void,
    /** The label of the volume with identity `uuid` (backups/NAME), for messages; null when gone. */
    private readonly labelOf: (uuid: string) => string | null,
    waitMs?: number
  ) {
    const fromEnv = Number(process.env.VDISKFS_LAZY_WAIT_MS)
    this.waitMs = waitMs ?? (Number.isSafeInteger(fromEnv) && fromEnv > 0 ? fromEnv : lazyWaitMsDefault)
  }

  /**
   * Loads the pulls in progress: takes off the lists the chunks that are here already (or gone), and
   * drops the pulls whose backup is gone and whose import is too.
   */
  open (pending: Iterable<[string, number]> = []): void {
    for (const [uuid, refs] of pending) this.pending.set(uuid, refs)
    const imports = new Set(this.catalog.imports().map(row => row.key))
    this.catalog.transaction(() => {
      for (const id of this.catalog.presentLazyChunks()) this.catalog.deleteLazyChunk(id)
      for (const row of this.catalog.lazyPulls()) {
        if (this.catalog.volumeByUuid(row.uuid) === undefined && !imports.has(row.importKey)) this.catalog.deleteLazyPull(row.uuid)
      }
    })
    const counts = this.catalog.lazyChunkCounts()
    for (const row of this.catalog.lazyPulls()) {
      if (this.catalog.volumeByUuid(row.uuid) !== undefined && (counts.get(row.uuid) ?? 0) === 0 && !this.pending.has(row.uuid)) { this.catalog.transaction(() => this.catalog.deleteLazyPull(row.uuid)); continue }
      this.pulls.set(row.uuid, row)
      this.missing.set(row.uuid, counts.get(row.uuid) ?? 0)
    }
  }

  /** A lazy pull whose import is beginning: recorded before its first chunk is listed. */
  begin (row: LazyPullRow): void {
    this.catalog.putLazyPull(row)
  }

  /** The pull's backup exists (its import finished): counts its list, or ends it when nothing is missing. */
  started (uuid: string): void {
    const row = this.catalog.lazyPulls().find(r => r.uuid === uuid)
    if (row === undefined) return
    const missing = this.catalog.lazyChunkCount(uuid)
    const withTotal = { ...row, chunks: missing }
    this.catalog.transaction(() => this.catalog.putLazyPull(withTotal))
    this.pulls.set(uuid, withTotal)
    this.missing.set(uuid, missing)
    if (missing === 0 && !this.pending.has(uuid)) this.complete(uuid)
  }

  /**
   * Pull `uuid`'s `refs` references are about to be applied after the reply (lazy-refs.ts): it is not done
   * before settled(), and until then its progress counts them as chunks to fetch (an upper bound: some
   * may be here already, or share a chunk).
   */
  markPending (uuid: string, refs: number): void { this.pending.set(uuid, refs) }

  /** Pull `uuid`'s references are applied and committed: its list is whole; counted (and done when empty). */
  settled (uuid: string): void {
    if (!this.pending.delete(uuid)) return
    // Counted from the catalog: the apply listed only chunks absent under the maintenance lock, and a fill
    // since (filled(), after the lock) took its chunk off the list in the same transaction.
    this.started(uuid)
  }

  get (uuid: string): LazyPullRow | undefined { return this.pulls.get(uuid) }

  progress (): LazyPullProgress[] {
    return [...this.pulls.values()].map(row => {
      const refs = this.pending.get(row.uuid) ?? 0
      return { uuid: row.uuid, remote: row.remote, manifest: row.manifest, chunks: row.chunks + refs, missing: (this.missing.get(row.uuid) ?? 0) + refs, hydrator: this.sessions.has(row.uuid), startedMs: row.startedMs, pending: this.pending.has(row.uuid) }
    })
  }

  /**
   * A hydrator connects for pull `uuid`: it hears of the chunks readers wait for from now on, and of
   * those they wait for already. BUSY when one is connected; NOT_FOUND when the pull is not in progress.
   * Returns the function that ends the session.
   */
  attach (uuid: string, session: HydratorSession): () => void {
    if (!this.pulls.has(uuid)) throw new VdiskError('NOT_FOUND', `no lazy pull in progress for the backup with identity ${uuid} (done, or removed)`)
    if (this.sessions.has(uuid)) throw new VdiskError('BUSY', `a hydrator is connected already for ${this.labelOf(uuid) ?? uuid}`)
    this.sessions.set(uuid, session)
    for (const id of this.waiters.keys()) if (this.catalog.lazyPullsOfChunk(id).includes(uuid)) session.want(this.chunks.info(id).hash)
    return () => { if (this.sessions.get(uuid) === session) this.sessions.delete(uuid) }
  }

  /** Those of `hashes` (hex) whose chunk is still absent: what a hydrator's walk sends. */
  missingHashes (uuid: string, hashes: string[]): string[] {
    const out: string[] = []
    for (const hex of hashes) {
      const id = this.catalog.chunkByHash(Buffer.from(hex, 'hex'))
      if (id !== undefined && this.chunks.isAbsent(id)) out.push(hex)
    }
    return out
  }

  /** Whether a reader waits for absent chunk `id` now. */
  waitedFor (id: number): boolean { return this.waiters.has(id) }

  /** Waits until absent chunk `id` is filled, at most waitMs; then IO, logged with the remote it comes from. */
  async wait (id: number, what: string): Promise<void> {
    let waiter = this.waiters.get(id)
    if (waiter === undefined) {
      let resolve!: () => void
      const promise = new Promise<void>(r => { resolve = r })
      waiter = { promise, resolve, waiting: 0 }
      this.waiters.set(id, waiter)
      const hash = this.chunks.info(id).hash
      for (const uuid of this.catalog.lazyPullsOfChunk(id)) this.sessions.get(uuid)?.want(hash)
    }
    const mine = waiter
    mine.waiting++
    let timer: NodeJS.Timeout | undefined
    try {
      await Promise.race([mine.promise, new Promise<void>((_resolve, reject) => {
        timer = setTimeout(() => reject(this.timedOut(id, what)), this.waitMs)
      })])
    } finally {
      clearTimeout(timer)
      if (--mine.waiting === 0 && this.waiters.get(id) === mine) this.waiters.delete(id)
    }
  }

  private timedOut (id: number, what: string): VdiskError {
    const pulls = this.catalog.lazyPullsOfChunk(id).map(uuid => this.pulls.get(uuid)).filter((row): row is LazyPullRow => row !== undefined)
    const from = pulls.length === 0
      ? 'a lazy pull no longer in progress'
      : pulls.map(row => `remote ${row.remote} (backup ${row.manifest}, ${this.sessions.has(row.uuid) ? 'hydrator connected: is the store reachable?' : 'no hydrator connected: vdiskfs pull MNT REMOTE ID NAME --lazy --resume'})`).join(', ')
    const message = `${what}: its chunk ${id} is not here yet and was not fetched from ${from} within ${this.waitMs / 1000} s`
    this.log(`lazy pull: ${message}; the read fails with EIO`)
    return new VdiskError('IO', message)
  }

  /** Chunks `ids` were filled (chunk-store.ts index): wakes their readers and takes them off the lists. */
  filled (ids: number[]): void {
    const done: string[] = []
    this.catalog.transaction(() => {
      for (const id of ids) {
        for (const uuid of this.catalog.lazyPullsOfChunk(id)) {
          const left = (this.missing.get(uuid) ?? 1) - 1
          this.missing.set(uuid, left)
          if (left === 0 && this.pulls.has(uuid) && !this.pending.has(uuid)) done.push(uuid)
        }
        this.catalog.deleteLazyChunk(id)
      }
    })
    for (const id of ids) this.waiters.get(id)?.resolve()
    for (const uuid of done) this.complete(uuid)
  }

  /** Pull `uuid` lacks nothing more: its row goes, and its backup is an ordinary local one. */
  private complete (uuid: string): void {
    this.catalog.transaction(() => this.catalog.deleteLazyPull(uuid))
    this.pulls.delete(uuid)
    this.missing.delete(uuid)
    this.log(`lazy pull: ${this.labelOf(uuid) ?? uuid} is whole (every block here): an ordinary local backup now`)
  }

  /**
   * Ends the pulls whose backup was removed before it was whole (rm): their rows go, and their absent
   * chunks, named by no map now, are garbage for gc. (A pull is in `pulls` only once its backup exists.)
   */
  dropRemoved (): void {
    for (const uuid of [...this.pulls.keys()]) {
      if (this.catalog.volumeByUuid(uuid) !== undefined) continue
      this.catalog.transaction(() => this.catalog.deleteLazyPull(uuid))
      this.pulls.delete(uuid)
      this.missing.delete(uuid)
      this.log(`lazy pull: the backup with identity ${uuid} was removed before it was whole: its pull ends`)
    }
  }
}
