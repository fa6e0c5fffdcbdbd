/**
 * Imports: a backup made from an export stream's blocks (src/transfer/stream.ts), atomically and
 * resumably. The blocks go straight into the chunk store (the workers hash and compress them; a block
 * the pool already holds is not stored again), and what an import stored so far is recorded in the
 * catalog under the stream's key (imports, import_blocks: invisible to the namespace, live for gc).
 * The backup appears only at `finish`: one commit writes its map pages and row, and deletes the
 * import's progress in the same transaction. A kill at any point before leaves no backup and keeps
 * the progress; the same stream imported again skips what was stored.
 *
 * A consistency group's import (`vdiskfs import --group`) stages each member instead of finishing it
 * (ImportSession.stage: received whole, its rows kept) and makes them all at once (Importer.finishGroup:
 * one commit, every name and the group's name held); staging is in memory only.
 *
 * An abandoned import (never continued) is dropped after importAbandonedMs when a catalog opens
 * (catalog.ts), which makes its chunks garbage for gc.
 *
 * A resumed import keeps only what the stream it finishes with carries. A stream's identity is in
 * every copy of its header, so the progress under a key may come from another stream that was cut (a
 * hostile one, carrying data where the genuine backup has holes): blocks arrive in increasing order,
 * so each batch drops the recorded blocks in the gaps between the indexes it received, a recorded
 * block whose content differs from the one received is replaced, and finish drops those past the
 * last index received. One session per key runs at a time (a second is BUSY), so no other stream
 * records blocks behind this one's back.
 *
 * Assumes: the caller (the control operation) has checked each block against its BLAKE3 id (the CLI's
 * StreamDecoder does), and calls finish only after the stream's trailer checked. Blocks a batch stores
 * are re-hashed by the workers and must match their id; a block whose id names a chunk the pool
 * already holds is taken as that chunk, which every read verifies.
 * Errors: EXISTS (a backup with the name or the identity), NOT_FOUND (the base of an incremental
 * stream), INVALID (block size or size the pool cannot take), CORRUPT (a block whose bytes do not match
 * its id), NO_SPACE, IO.
 */
import { ChunkRow, defaultModeOf } from '../catalog/catalog'
import { VdiskError, corrupt, exists, invalid } from '../errors'
import { chunkEntry } from '../format/map-format'
import { createdMsMax, importFinishTurnBlocks, lazyImportRowsInMemoryMax, sealBatchBlocks, volumeBytesMax } from '../limits'
import { BlockMap } from '../map/block-map'
import { Committer } from './commit'
import { checkName } from './names'
import { PoolState } from './pool-state'
import { Volume } from './volume'
import { refusedBlockMessage } from '../transfer/wire'

/** What an import needs to know of its stream (a StreamHeader's fields). */
export interface ImportSpec {
  key: string
  uuid: string
  baseUuid: string | null
  size: number
  blockBytes: number
  createdMs: number
  /** The identity and label of the volume the backup was taken from, when the stream carries them. */
  source?: { uuid: string, label: string } | null
  /**
   * A lazy pull's import (lazy.ts): its blocks may come as references (data null, hash set), whose
   * chunks the pool lacks become absent chunks listed for the pull under `uuid`.
   */
  lazy?: boolean
}

/**
 * One block to import: its index, and its bytes and id, or null for a block that reads as zeros; in a
 * lazy pull's import, a reference: no bytes, its id (the block fills in later).
 */
export interface ImportBlock {
  index: number
  data: Buffer | null
  hash: Buffer | null
  /**
   * `data` is a zstd frame holding the block (a pull's chunk as the remote store keeps it), at most a
   * block long: the workers decompress it and check it against `hash`, and it is stored as it came.
   */
  zstd?: boolean
}

export interface ImportCounts {
  /** Blocks recorded by an earlier run (a resumed import) that this stream carries as they are: not stored again. */
  resumedBlocks: number
  /** Data blocks stored as new chunks, and those the pool already held. */
  newChunks: number
  dedupedBlocks: number
  zeroBlocks: number
  /** A lazy pull's blocks whose chunks are not here yet (absent chunks made for them). */
  absentBlocks: number
}

/** An import whose stream was received whole and checked, waiting to be made visible with its group (stage). */
interface StagedImport { spec: ImportSpec, name: string, lastIndex: number }

export class Importer {
  /** Keys of the sessions running (begun and not closed): one per key. */
  private readonly running = new Set<string>()
  /**
   * Imports staged for a group (ImportSession.stage), by key: received whole, their rows recorded, no
   * backup made yet. In memory only: after a restart the group's import runs again (it resumes: every
   * block recorded is skipped) and stages them anew.
   */
  private readonly staged = new Map<string, StagedImport>()

  constructor (private readonly state: PoolState, private readonly committer: Committer, private readonly exclusive: <T>(work: () => Promise<T>) => Promise<T>) {}

  /**
   * Starts or resumes the import of `spec` as backup `name`. Refuses what could never finish: a name or
   * identity already present, a base this pool lacks, another block size, a creation time past
   * createdMsMax (ls and prune could not show it); BUSY while another import of the same stream runs.
   * The caller must close() the session once it is done with it (after its last store). `alsoRecord`
   * runs in the transaction that records the import (its key given): a lazy pull's row.
   */
  begin (spec: ImportSpec, name: string, alsoRecord?: (key: string) => void): ImportSession {
    checkName(name)
    const catalog = this.state.catalog
    if (spec.blockBytes !== this.state.blockBytes) throw invalid(`the stream's block size is ${spec.blockBytes} bytes, this pool's ${this.state.blockBytes}: import it into a pool made with --block-size ${spec.blockBytes}`)
    if (spec.size > volumeBytesMax) throw new VdiskError('TOO_BIG', `the stream's backup is ${spec.size} bytes, past the largest volume size`)
    if (!Number.isSafeInteger(spec.createdMs) || spec.createdMs < 0 || spec.createdMs > createdMsMax) throw invalid(`the stream's creation time ${spec.createdMs} ms is out of range (after the year 9999)`)
    this.checkTarget(spec, name)
    if (this.running.has(spec.key)) throw new VdiskError('BUSY', `an import of this stream (identity ${spec.uuid}) is running already`)
    const now = Date.now()
    const known = catalog.imports().find(row => row.key === spec.key)
    const resumable = known !== undefined && known.size === spec.size && known.blockBytes === spec.blockBytes
    catalog.transaction(() => {
      if (known !== undefined && !resumable) catalog.deleteImport(spec.key)
      catalog.putImport({ key: spec.key, name, size: spec.size, blockBytes: spec.blockBytes, baseUuid: spec.baseUuid, startedMs: known?.startedMs ?? now, updatedMs: now })
      // A lazy pull's row goes in the same transaction (one fsync, not two).
      alsoRecord?.(spec.key)
    })
    this.running.add(spec.key)
    this.staged.delete(spec.key)
    return new ImportSession(this.state, this.committer, this.exclusive, spec, name, () => this.running.delete(spec.key), staged => this.staged.set(spec.key, staged))
  }

  /**
   * Makes the staged imports `keys` visible as one consistency group `group`, atomically: every name
   * and the group's name held (sorted order, as a group backup takes them), all maps built, then every
   * backup inserted in one synchronous step and one commit (which drops the imports' rows). Refused,
   * nothing made, when a key is not staged (NOT_FOUND: import the group again), a name, an identity or
   * the group exists (EXISTS), or a base is missing (NOT_FOUND).
   */
  async finishGroup (group: string, keys: string[]): Promise<Volume[]> {
    checkName(group)
    if (keys.length === 0 || new Set(keys).size !== keys.length) throw invalid('a group import needs its members, each once')
    // Bases still being mapped (lazy pulls' backups) are waited for outside the lock (finish's comment),
    // before the members are checked: nothing below awaits between that check and the lock's own checks.
    for (const key of keys) {
      const staged = this.staged.get(key)
      if (staged !== undefined) await baseOf(this.state, staged.spec)?.mapped()
    }
    const members = keys.map(key => {
      const staged = this.staged.get(key)
      if (staged === undefined || this.running.has(key)) throw new VdiskError('NOT_FOUND', `no staged import ${key} (its stream was not received whole, or the daemon restarted): import the group again`)
      return staged
    })
    if (new Set(members.map(m => m.name)).size !== members.length) throw invalid('two backups of the group would have one name')
    const groupTaken = (): void => {
      for (const volume of this.state.volumes.values()) if (volume.kind === 'backup' && volume.groupName === group && !volume.hidden) throw exists(`backup group ${group}`)
    }
    const releases: Array<() => void> = []
    try {
      releases.push(await this.state.whenNameFree(`group/${group}`, () => { groupTaken(); return this.state.reserveName(`group/${group}`) }))
      for (const name of members.map(m => m.name).sort()) {
        releases.push(await this.state.whenNameFree(`backup/${name}`, () => {
          for (const volume of this.state.volumes.values()) if (volume.kind === 'backup' && volume.name === name) throw exists(`backup ${name}`)
          return this.state.reserveName(`backup/${name}`)
        }))
      }
      return await this.exclusive(async () => {
        const maps: BlockMap[] = []
        for (const member of members) {
          const base = this.checkTarget(member.spec, member.name)
          maps.push(await buildImportMap(this.state, member.spec, member.lastIndex, base))
        }
        // The names and the group are held; checked again with the identities and bases, in the step
        // that makes every backup.
        groupTaken()
        for (const member of members) this.checkTarget(member.spec, member.name)
        const now = Date.now()
        const made = members.map((member, i) => {
          const volume = importedBackup(this.state, member.spec, member.name, maps[i], now)
          volume.groupName = group
          this.state.catalog.expectVolume(volume.id, member.spec.uuid, member.spec.key)
          this.state.volumes.set(volume.id, volume)
          this.state.changed(volume)
          return volume
        })
        for (const key of keys) this.staged.delete(key)
        await this.committer.commit()
        return made
      })
    } finally {
      for (const release of releases.reverse()) release()
    }
  }

  /** Checks that backup `name` and identity spec.uuid are free and the base is here. */
  checkTarget (spec: ImportSpec, name: string): Volume | null {
    // A name held by an operation in flight (a backup waiting for its source) is not refused here:
    // finish() waits for the holder and decides then.
    for (const volume of this.state.volumes.values()) if (volume.kind === 'backup' && volume.name === name) throw exists(`backup ${name}`)
    const same = this.state.catalog.volumeByUuid(spec.uuid)
    if (same !== undefined) {
      const volume = this.state.volumes.get(same)
      throw exists(`a volume with the stream's identity ${spec.uuid} (${volume?.label ?? `volume ${same}`})`)
    }
    if (spec.baseUuid === null) return null
    const baseId = this.state.catalog.volumeByUuid(spec.baseUuid)
    const base = baseId === undefined ? undefined : this.state.volumes.get(baseId)
    if (base === undefined || base.kind !== 'backup' || base.hidden) {
      throw new VdiskError('NOT_FOUND', `this incremental stream needs its base backup (identity ${spec.baseUuid}) on the target pool, which has no backup with that identity: import the base first`)
    }
    return base
  }
}

export class ImportSession {
  readonly counts: ImportCounts = { resumedBlocks: 0, newChunks: 0, dedupedBlocks: 0, zeroBlocks: 0, absentBlocks: 0 }
  /** Milliseconds spent in each step (the lazy pull's timing line in the daemon log). */
  readonly timing = { lookMs: 0, ingestMs: 0, rowsMs: 0, mapMs: 0, commitMs: 0 }
  /** Blocks an earlier run recorded under this key when this session began. */
  readonly recordedBlocks: number
  /** The highest block index received so far (-1: none): every later one must be above it. */
  private lastIndex = -1
  private readonly blocks: number
  /** The stream's blocks (its size in blocks). */
  get blockCount (): number { return this.blocks }
  /**
   * A new lazy pull's rows, kept here rather than in the catalog's import_blocks, where they were written,
   * read back for the map and deleted by the commit (about 50 ms of CPU of a warm daemon per 15,000):
   * its blocks, its chunks (null: zeros), and the chunks held for gc meanwhile (state.importsHeldInMemory).
   * Null for every other import, and once past lazyImportRowsInMemoryMax (then written to the catalog).
   * A daemon killed before the finish keeps no rows: the pull sends its references again (the absent
   * chunks, in the catalog, are found by their ids), and the head's chunks, if gc took them, are fetched again.
   */
  private memory: { blocks: number[], chunks: Array<number | null>, held: Set<number> } | null = null

  constructor (
    private readonly state: PoolState,
    private readonly committer: Committer,
    private readonly exclusive: <T>(work: () => Promise<T>) => Promise<T>,
    readonly spec: ImportSpec,
    readonly name: string,
    private readonly ended: () => void,
    private readonly onStaged: (staged: StagedImport) => void
  ) {
    this.recordedBlocks = state.catalog.importBlockCount(spec.key)
    this.blocks = Math.ceil(spec.size / state.blockBytes)
    // VDISKFS_LAZY_ROWS_IN_MEMORY=0: a lazy pull's rows go to the catalog as an import's do (for measuring against).
    if (spec.lazy === true && this.recordedBlocks === 0 && process.env.VDISKFS_LAZY_ROWS_IN_MEMORY !== '0') {
      this.memory = { blocks: [], chunks: [], held: new Set() }
      state.importsHeldInMemory.add(this.memory.held)
    }
  }

  /** Ends the session (the caller's close, after its last store): what it held in memory is no longer held. */
  close (): void {
    if (this.memory !== null) this.state.importsHeldInMemory.delete(this.memory.held)
    this.ended()
  }

  /**
   * The batch's rows, in its transaction: written to the catalog, with those kept in memory so far once
   * past lazyImportRowsInMemoryMax, or (a new lazy pull's) kept in memory by what this returns, which the
   * caller runs once the transaction committed (a failed one leaves the memory as it was).
   */
  private recordRows (rows: Array<{ block: number, chunkId: number | null }>): () => void {
    const memory = this.memory
    if (memory !== null && memory.blocks.length + rows.length <= lazyImportRowsInMemoryMax) {
      return () => {
        for (const row of rows) {
          memory.blocks.push(row.block)
          memory.chunks.push(row.chunkId)
          if (row.chunkId !== null) memory.held.add(row.chunkId)
        }
      }
    }
    if (memory !== null) this.state.catalog.putImportBlocks(this.spec.key, memory.blocks.map((block, i) => ({ block, chunkId: memory.chunks[i] })))
    this.state.catalog.putImportBlocks(this.spec.key, rows)
    return () => {
      if (memory === null) return
      this.state.importsHeldInMemory.delete(memory.held)
      this.memory = null
    }
  }

  /** Whether `block` is recorded (in `recorded`, a batch's range of the rows) with this content already. */
  private alreadyHas (block: ImportBlock, recorded: Map<number, number | null>): boolean {
    if (!recorded.has(block.index)) return false
    const chunkId = recorded.get(block.index) as number | null
    if (chunkId === null || block.hash === null) return chunkId === null && block.hash === null
    try { return this.state.chunks.info(chunkId).hash.equals(block.hash) } catch { return false }
  }

  /**
   * Stores a batch of blocks (in increasing index order, each above the previous batch's) and records
   * them, durably: packs first (fdatasync), then the chunk index, then the import's rows, in one
   * transaction with the removal of what an earlier run recorded in the gaps this stream skipped.
   * Runs alone among maintenance jobs (sealing and gc also store, index and free chunks).
   * Errors: CORRUPT for a block out of order or past the end, or whose bytes do not match its id.
   */
  async store (blocks: ImportBlock[]): Promise<void> {
    if (blocks.length === 0) return
    const first = this.lastIndex + 1
    for (const block of blocks) {
      if (!Number.isSafeInteger(block.index) || block.index <= this.lastIndex || block.index >= this.blocks) {
        throw corrupt(`import ${this.spec.key}: block ${block.index} out of order or past the end (${this.blocks} blocks)`)
      }
      this.lastIndex = block.index
    }
    // What an earlier run recorded from just past the previous batch to this batch's last block: one
    // query per batch, not a map of all. Those this batch does not carry are dropped.
    const recorded = this.recordedBlocks === 0 ? new Map<number, number | null>() : this.state.catalog.importBlocks(this.spec.key, first, this.lastIndex)
    const carried = new Set(blocks.map(b => b.index))
    const stale = [...recorded.keys()].filter(index => !carried.has(index))
    const todo = blocks.filter(b => !this.alreadyHas(b, recorded))
    this.counts.resumedBlocks += blocks.length - todo.length
    if (todo.length === 0 && stale.length === 0) return
    await this.exclusive(async () => {
      if (this.state.lifecycle !== 'open') throw new VdiskError('BUSY', 'the pool is closing')
      const t = performance.now()
      const { rows, fresh, absent, listed } = this.sortBlocks(todo)
      const groups: ImportBlock[][] = []
      for (let i = 0; i < fresh.length; i += sealBatchBlocks) groups.push(fresh.slice(i, i + sealBatchBlocks))
      this.timing.lookMs += performance.now() - t
      const ingesting = performance.now()
      await this.state.ingest.run(groups, async group => { rows.push(...await this.storeGroup(group)) })
      this.timing.ingestMs += performance.now() - ingesting
      // The pull and the absent chunks it lists go to catalog.log first (as a commit's rows do): a catalog
      // rebuilt from the log keeps the pull resumable (catalog-log.ts). A chunk filled meanwhile is listed
      // as absent there, harmlessly: repair finds it in its pack.
      const pull = listed.size === 0 ? undefined : this.state.catalog.lazyPulls().find(row => row.uuid === this.spec.uuid)
      const now = Date.now()
      let kept = (): void => {}
      const transaction = (): void => this.state.catalog.transaction(() => {
        // Another import of the same stream may have finished (and dropped this key) meanwhile.
        if (!this.state.catalog.hasImport(this.spec.key)) throw exists(`a volume with the stream's identity ${this.spec.uuid} (imported meanwhile)`)
        for (const index of stale) this.state.catalog.deleteImportBlocks(this.spec.key, index, index)
        this.state.catalog.insertChunks(absent.values())
        this.state.catalog.putLazyChunks(this.spec.uuid, listed)
        kept = this.recordRows(rows)
        this.state.catalog.touchImport(this.spec.key, now)
      })
      // Once committed, the absent rows go into the chunk store's row cache in the same synchronous step
      // (no fill can come between and be overwritten by them): finish's map reads their sizes from there.
      const apply = (): void => { const t = performance.now(); transaction(); kept(); this.state.chunks.remember(absent.values()); this.timing.rowsMs += performance.now() - t }
      if (pull === undefined) { apply(); return }
      // The transaction in the append's turn: no catalog.log snapshot step runs between them.
      const made = new Map([...absent.values()].map(row => [row.id, row]))
      const logged = [...listed].flatMap(id => { const row = made.get(id) ?? this.state.catalog.chunk(id); return row === undefined ? [] : [{ id, hash: row.hash, rawBytes: row.rawBytes }] })
      await this.state.catalogLog.appendLazy({ pull, absent: logged }, apply)
    })
  }

  /**
   * A batch's blocks sorted (under the maintenance lock): the rows of zeros, of chunks the pool holds and
   * of a lazy pull's references (absent chunks: those the pool lacks made, and every one listed for the
   * pull), and the blocks with bytes to store (fresh).
   */
  private sortBlocks (todo: ImportBlock[]): { rows: Array<{ block: number, chunkId: number | null }>, fresh: ImportBlock[], absent: Map<string, ChunkRow>, listed: Set<number> } {
    const rows: Array<{ block: number, chunkId: number | null }> = []
    const fresh: ImportBlock[] = []
    const absent = new Map<string, ChunkRow>()
    const listed = new Set<number>()
    // The chunks the pool indexes already, looked up for the whole batch at once (nothing in the loop
    // below changes the index: the new chunks are stored after it).
    const known = this.state.catalog.chunksByHashes(todo.flatMap(block => block.hash === null ? [] : [block.hash]))
    for (const block of todo) {
      if (block.hash === null) { rows.push({ block: block.index, chunkId: null }); this.counts.zeroBlocks++; continue }
      if (block.data === null && this.spec.lazy !== true) throw corrupt(`import ${this.spec.key}: block ${block.index} has no bytes`)
      const key = block.hash.toString('hex')
      const indexed = known.get(key)
      // An absent chunk is no copy of a block: bytes that come fill it (fresh, through the chunk store).
      const absentHere = indexed !== undefined && this.state.chunks.isAbsent(indexed)
      if (indexed !== undefined && (!absentHere || block.data === null)) {
        rows.push({ block: block.index, chunkId: indexed })
        if (absentHere) listed.add(indexed); else this.counts.dedupedBlocks++
        continue
      }
      if (block.data === null) {
        let row = absent.get(key)
        if (row === undefined) absent.set(key, row = this.state.chunks.newAbsent(block.hash, this.state.blockBytes))
        rows.push({ block: block.index, chunkId: row.id })
        listed.add(row.id)
        this.counts.absentBlocks++
        continue
      }
      fresh.push(block)
    }
    return { rows, fresh, absent, listed }
  }

  /**
   * Hashes and compresses a group in the workers (a zstd frame: decompresses and hashes it, and keeps
   * it as it came), checks each id, and stores the chunks once every one of the group checked.
   */
  private async storeGroup (group: ImportBlock[]): Promise<Array<{ block: number, chunkId: number | null }>> {
    const outcomes = await this.state.ingest.batch(
      {
        count: group.length,
        fill: (i, region) => {
          const data = group[i].data as Buffer
          if (group[i].zstd !== true) { data.copy(region, 0, 0, region.length); return 0 }
          if (data.length === 0 || data.length > region.length) throw corrupt(refusedBlockMessage(group[i].index, `came as a zstd frame of ${data.length} bytes (1 to ${region.length})`))
          return data.copy(region)
        }
      },
      'import worker',
      (i, hash) => { if (!hash.equals(group[i].hash as Buffer)) throw corrupt(refusedBlockMessage(group[i].index, 'does not match its BLAKE3 id')) },
      (i, why) => corrupt(refusedBlockMessage(group[i].index, `came as a zstd frame that ${why}`)),
      // A lazy pull's blocks (its head) are waited for by the command that makes the backup.
      this.spec.lazy === true)
    return outcomes.map((outcome, i) => {
      if (outcome.zero) { this.counts.zeroBlocks++; return { block: group[i].index, chunkId: null } }
      if (outcome.isNew) this.counts.newChunks++
      else this.counts.dedupedBlocks++
      return { block: group[i].index, chunkId: outcome.chunkId }
    })
  }

  /**
   * Makes the backup: the base's map (or an empty one), the recorded blocks applied, the stream's
   * size; then one commit that inserts it with the stream's identity and drops the import's rows.
   * Call only after the stream's trailer checked and the last batch was stored.
   */
  async finish (inserted?: (volume: Volume) => void): Promise<Volume> {
    // A base whose own references are still being applied (a lazy pull's backup) is copied only once
    // they are: waited for here, outside the maintenance lock the apply takes (pending never comes back,
    // and the base is checked again under the lock).
    await baseOf(this.state, this.spec)?.mapped()
    // The name is held from here to the end: a backup of the same name waits for the import (and the
    // import for a backup holding it first), so neither fails with EXISTS for a name that never existed.
    const key = `backup/${this.name}`
    const release = await this.state.whenNameFree(key, () => {
      this.checkNameFree()
      return this.state.reserveName(key)
    })
    try {
      return await this.finishHolding(inserted)
    } finally {
      release()
    }
  }

  /**
   * `inserted` runs in the synchronous step that inserts the volume, before its commit (a lazy pull's
   * pending state, lazy-refs.ts).
   */
  private async finishHolding (inserted?: (volume: Volume) => void): Promise<Volume> {
    return await this.exclusive(async () => {
      const state = this.state
      const base = new Importer(state, this.committer, this.exclusive).checkTarget(this.spec, this.name)
      let t = performance.now()
      const map = await buildImportMap(state, this.spec, this.lastIndex, base, this.memory)
      this.timing.mapMs += performance.now() - t
      const volume = importedBackup(state, this.spec, this.name, map, Date.now())
      // The name is held (finish), so nothing took it while the map was built; checked all the same.
      this.checkNameFree()
      state.catalog.expectVolume(volume.id, this.spec.uuid, this.spec.key)
      state.volumes.set(volume.id, volume)
      inserted?.(volume)
      state.changed(volume)
      t = performance.now()
      await this.committer.commit()
      this.timing.commitMs += performance.now() - t
      return volume
    })
  }

  /**
   * For a group import (Importer.finishGroup): the stream was received whole and checked; its rows past
   * the last block it carried are dropped, and the import waits, recorded, for its group's finish.
   * Call only after the stream's trailer checked and the last batch was stored.
   */
  async stage (): Promise<void> {
    await this.exclusive(async () => {
      const state = this.state
      new Importer(state, this.committer, this.exclusive).checkTarget(this.spec, this.name)
      const last = this.lastIndex
      if (this.recordedBlocks > 0) state.catalog.transaction(() => state.catalog.deleteImportBlocks(this.spec.key, last + 1, Number.MAX_SAFE_INTEGER))
      this.onStaged({ spec: this.spec, name: this.name, lastIndex: last })
    })
  }

  private checkNameFree (): void {
    for (const volume of this.state.volumes.values()) if (volume.kind === 'backup' && volume.name === this.name) throw exists(`backup ${this.name}`)
  }
}

/**
 * The map of an import's backup: the base's map (or an empty one), the recorded blocks up to
 * `lastIndex` applied, the stream's size. What an earlier run recorded past `lastIndex` is not this
 * stream's and is dropped first. The rows are read in pages of importFinishTurnBlocks, each page one
 * turn: the daemon keeps serving the mount while a large map is built, and the rows are never all in
 * memory at once. Call under the maintenance lock.
 */
async function buildImportMap (state: PoolState, spec: ImportSpec, lastIndex: number, base: Volume | null, memory: { blocks: number[], chunks: Array<number | null> } | null = null): Promise<BlockMap> {
  const blocks = Math.ceil(spec.size / state.blockBytes)
  if (memory === null) state.catalog.transaction(() => state.catalog.deleteImportBlocks(spec.key, lastIndex + 1, Number.MAX_SAFE_INTEGER))
  const map = new BlockMap(state.pages, base?.map.copyRoot() ?? new Float64Array(0), state.nextEpoch++, base?.map.allocatedBlocks ?? 0, base?.map.storedBytes ?? 0, state.sizeOf)
  map.rootDirty = true
  map.resize(blocks)
  if (memory !== null) {
    // A lazy pull's rows, kept in memory (ImportSession.memory): every one of them received in order, none past lastIndex.
    for (let i = 0; i < memory.blocks.length; i++) {
      const chunkId = memory.chunks[i]
      map.set(memory.blocks[i], chunkId === null ? 0 : chunkEntry(chunkId))
      if (i % importFinishTurnBlocks === importFinishTurnBlocks - 1) await new Promise(resolve => setImmediate(resolve))
    }
    return map
  }
  for (let from = 0; ;) {
    const rows = state.catalog.importBlocks(spec.key, from, lastIndex, importFinishTurnBlocks)
    if (rows.size === 0) break
    for (const [block, chunkId] of rows) {
      if (block >= blocks) throw corrupt(`import ${spec.key} recorded block ${block}, past the end`)
      map.set(block, chunkId === null ? 0 : chunkEntry(chunkId))
      from = block + 1
    }
    await new Promise(resolve => setImmediate(resolve))
  }
  return map
}

/** The base backup of an incremental stream, if the pool has it (checked again under the lock: checkTarget). */
function baseOf (state: PoolState, spec: ImportSpec): Volume | undefined {
  if (spec.baseUuid === null) return undefined
  const id = state.catalog.volumeByUuid(spec.baseUuid)
  return id === undefined ? undefined : state.volumes.get(id)
}

/** The backup an import makes, not yet in the pool: the caller inserts it (and its identity) and commits. */
function importedBackup (state: PoolState, spec: ImportSpec, name: string, map: BlockMap, nowMs: number): Volume {
  const volume = new Volume(state, state.nextVolumeId++, 'backup', name, spec.size, spec.createdMs, nowMs, null, spec.source?.label ?? null, map, null)
  volume.sourceUuid = spec.source?.uuid ?? null
  volume.uid = process.getuid?.() ?? 0
  volume.gid = process.getgid?.() ?? 0
  volume.mode = defaultModeOf('backup')
  volume.rowDirty = true
  return volume
}
