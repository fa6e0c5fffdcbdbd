/**
 * catalog.log: a second, self-describing copy of the catalog's volumes and map pages, so that a lost,
 * truncated or replaced catalog can be rebuilt from the pool's own files (issue #9, item 6). The
 * chunk index, packs and extents need no copy: repair rebuilds them from the pack and extent files.
 *
 * An append-only file: a 64-byte header, then records, each checksummed (CRC-32). Every commit
 * appends, and makes durable, the records of the pages and volume rows it is about to write, then runs
 * its SQLite transaction (append's `apply`, in the same turn, before any other append or snapshot step);
 * so the log always holds at least what the catalog holds. When the log grows past twice its last
 * snapshot (and catalogLogBytesMin), it is rewritten as a snapshot of the catalog (a new file renamed
 * over the old one), in the background: commits go on appending to the old file meanwhile (issue #21:
 * at 10,000 backups a rewrite inside a commit held backups 12.8-64 s). The snapshot notes where the old
 * file ended when it began (every append before had its transaction applied by then), reads the
 * catalog, and at the end, in one serial step, copies the old file's records from that point on after
 * what it read, syncs, and renames. Replay applies records in order, and each names a row's or page's
 * whole state, so the copied tail leaves every row and page as the newest record says: what a commit
 * appended before the snapshot began is in the catalog the snapshot read (or superseded by a newer
 * record, in the tail); what it appended after is in the tail. So the new file holds at least what the
 * catalog does, as the old one did until the rename.
 *
 * The header names the log (a random id) and the catalog names it too (meta `log_id`): a catalog
 * that does not name this log (truncated, rebuilt, replaced) never writes to it, so the copy repair
 * needs is never overwritten by the catalog that lost the rows; verify reports the mismatch.
 *
 * Lazy pulls (volume/lazy.ts) are kept too: each import batch of a lazy pull appends, before its
 * transaction, a record of the pull's row and the absent chunks it lists (id, BLAKE3, size), and a
 * snapshot holds every pull in progress with its absent chunks. A catalog rebuilt from the log then keeps
 * the pull resumable: repair puts back the absent chunks the maps name (it fills those a pack holds) and
 * the pull's row and list (docs/REMOTE.md, "Repair and verify"). A record of a pull that has ended since
 * is harmless: its chunks are in packs, so nothing stays absent, and the pull ends again at the next open.
 *
 * Reading (replay) never throws on damage: a record that fails its checksum is skipped and reading
 * resumes at the next record that passes (a torn tail is the common case).
 * Errors: append() and snapshot() throw the node:fs errors.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import zlib from 'node:zlib'
import { AbsentChunk, Catalog, LazyPullRow, VolumeRow } from './catalog'
import { RootPiece, assembleRoot, decodeRootList, isRootList, rootPieceHashBytes, splitRoot } from './root-pieces'
import { FileIo } from '../io/file-io'
import { catalogLogBytesMin, catalogLogWriteBytes, logSnapshotBatchPages, logSnapshotBatchRows } from '../limits'

export const catalogLogMagic = Buffer.from('VDCATLOG')
export const catalogLogVersion = 1
export const catalogLogHeaderBytes = 64
export const logRecordMagic = 0x524c4456 // "VDLR"
export const logRecordHeaderBytes = 16
export const logRecordVolume = 1
export const logRecordPage = 2
export const logRecordRemoved = 3
export const logRecordMeta = 4
export const logRecordLazy = 5
export const logRecordRootPieces = 6
/** Root pieces a record carries at most (a piece: its hash, u32 length, its bytes: 2,084 bytes at most). */
const rootPiecesPerRecord = 256
/** Meta key: the log holds every root piece the catalog does (written by a snapshot since schema 6). */
export const logRootPiecesMeta = 'log_root_pieces'
/** A lazy record's chunk: id (8 bytes), BLAKE3 (32), size (4); at most lazyRecordChunksMax of them per record. */
const lazyChunkBytes = 44
const lazyRecordChunksMax = 65536

/** A lazy pull as the log keeps it: its row and absent chunks it lists (some of them, in one record). */
export interface LazyLogEntry { pull: LazyPullRow, absent: AbsentChunk[] }

/** Where an append's time went (ms): waiting for the log (a snapshot's final step), writing, fdatasync, the transaction. */
export interface AppendTiming { waitMs: number, writeMs: number, syncMs: number, applyMs: number, bytes: number }

export interface LogBatch {
  removed: number[]
  pages: Array<{ id: number, epoch: number, entries: Buffer }>
  /** `list`: the root as the catalog stores it (a list of pieces), written instead of `row.root`. */
  rows: Array<{ row: VolumeRow, withRoot: boolean, list?: Buffer }>
  meta: Record<string, string>
  /** Root pieces the lists name that the log may not hold yet. */
  pieces?: RootPiece[]
}

function record (type: number, payload: Buffer): Buffer {
  const out = Buffer.alloc(logRecordHeaderBytes + payload.length)
  out.writeUInt32LE(logRecordMagic, 0)
  out.writeUInt16LE(type, 4)
  out.writeUInt32LE(payload.length, 8)
  payload.copy(out, logRecordHeaderBytes)
  out.writeUInt32LE(recordCrc(out, payload.length), 12)
  return out
}

function recordCrc (bytes: Buffer, length: number, at = 0): number {
  return zlib.crc32(bytes.subarray(at + logRecordHeaderBytes, at + logRecordHeaderBytes + length), zlib.crc32(bytes.subarray(at + 4, at + 12)))
}

/** A page's record, built in one buffer (no copy of the payload first). */
function pageRecord (page: { id: number, epoch: number, entries: Buffer }): Buffer {
  const length = 16 + page.entries.length
  const out = Buffer.alloc(logRecordHeaderBytes + length)
  out.writeUInt32LE(logRecordMagic, 0)
  out.writeUInt16LE(logRecordPage, 4)
  out.writeUInt32LE(length, 8)
  out.writeBigUInt64LE(BigInt(page.id), logRecordHeaderBytes)
  out.writeBigUInt64LE(BigInt(page.epoch), logRecordHeaderBytes + 8)
  page.entries.copy(out, logRecordHeaderBytes + 16)
  out.writeUInt32LE(recordCrc(out, length), 12)
  return out
}

/** A lazy pull's records: a JSON length (4 bytes), the row's JSON, then its chunks, lazyRecordChunksMax at most each. */
function * lazyRecords (entry: LazyLogEntry): Generator<Buffer> {
  const json = Buffer.from(JSON.stringify(entry.pull))
  for (let i = 0; i === 0 || i < entry.absent.length; i += lazyRecordChunksMax) {
    const chunks = entry.absent.slice(i, i + lazyRecordChunksMax)
    const payload = Buffer.alloc(4 + json.length + chunks.length * lazyChunkBytes)
    payload.writeUInt32LE(json.length, 0)
    json.copy(payload, 4)
    let at = 4 + json.length
    for (const chunk of chunks) {
      payload.writeBigUInt64LE(BigInt(chunk.id), at)
      chunk.hash.copy(payload, at + 8, 0, 32)
      payload.writeUInt32LE(chunk.rawBytes, at + 40)
      at += lazyChunkBytes
    }
    yield record(logRecordLazy, payload)
  }
}

/** Root pieces' records: each piece its hash (32 bytes), its length (u32) and its bytes. */
function * pieceRecords (pieces: RootPiece[]): Generator<Buffer> {
  for (let i = 0; i < pieces.length; i += rootPiecesPerRecord) {
    const slice = pieces.slice(i, i + rootPiecesPerRecord)
    const payload = Buffer.alloc(slice.reduce((n, piece) => n + rootPieceHashBytes + 4 + piece.bytes.length, 0))
    let at = 0
    for (const piece of slice) {
      piece.hash.copy(payload, at)
      payload.writeUInt32LE(piece.bytes.length, at + rootPieceHashBytes)
      piece.bytes.copy(payload, at + rootPieceHashBytes + 4)
      at += rootPieceHashBytes + 4 + piece.bytes.length
    }
    yield record(logRecordRootPieces, payload)
  }
}

/** A batch's records, one at a time, in the order replay expects: removals, root pieces, pages, volume rows, meta. */
function * batchRecords (batch: LogBatch): Generator<Buffer> {
  for (const id of batch.removed) { const b = Buffer.alloc(8); b.writeBigUInt64LE(BigInt(id)); yield record(logRecordRemoved, b) }
  yield * pieceRecords(batch.pieces ?? [])
  for (const page of batch.pages) yield pageRecord(page)
  for (const { row, withRoot, list } of batch.rows) {
    const root = withRoot && list === undefined ? row.root.toString('base64') : null
    yield record(logRecordVolume, Buffer.from(JSON.stringify({ ...row, root, ...(withRoot && list !== undefined ? { rootList: list.toString('base64') } : {}) })))
  }
  if (Object.keys(batch.meta).length > 0) yield record(logRecordMeta, Buffer.from(JSON.stringify(batch.meta)))
}

function encodeBatch (batch: LogBatch): Buffer {
  return Buffer.concat([...batchRecords(batch)])
}

function header (logId: string): Buffer {
  const out = Buffer.alloc(catalogLogHeaderBytes)
  catalogLogMagic.copy(out, 0)
  out.writeUInt32LE(catalogLogVersion, 8)
  Buffer.from(logId, 'hex').copy(out, 16)
  out.writeBigUInt64LE(BigInt(Date.now()), 32)
  return out
}

/** The log id a log file's header names, or null when the file is missing or its header is not one. */
export function catalogLogId (file: string): string | null {
  let fd: number
  try { fd = fs.openSync(file, 'r') } catch { return null }
  try {
    const bytes = Buffer.alloc(catalogLogHeaderBytes)
    if (fs.readSync(fd, bytes, 0, catalogLogHeaderBytes, 0) < catalogLogHeaderBytes || !bytes.subarray(0, 8).equals(catalogLogMagic)) return null
    return bytes.subarray(16, 32).toString('hex')
  } finally { fs.closeSync(fd) }
}

/** What a log says the catalog held, after replaying every record that passes its checksum. */
export interface LogState {
  logId: string
  volumes: Map<number, VolumeRow>
  pages: Map<number, { epoch: number, entries: Buffer }>
  meta: Record<string, string>
  /** Lazy pulls by their backup's uuid: the last row logged, and every absent chunk logged for it. */
  lazy: Map<string, { pull: LazyPullRow, absent: Map<number, AbsentChunk> }>
  /** Root pieces the log holds, by hash (hex); checked when a root is assembled from them. */
  pieces: Map<string, Buffer>
  /** Volumes whose last root was logged as a list, with it (resolved into `volumes` at the end). */
  lists: Map<number, Buffer>
  /** Volumes whose logged list could not be assembled (a piece missing or damaged), with why: their root reads as empty. */
  rootsUnresolved: string[]
  records: number
  /** Bytes skipped because they failed their checksum (a torn tail, damage). */
  skippedBytes: number
}

export async function replayCatalogLog (file: string): Promise<LogState | null> {
  let bytes: Buffer
  try { bytes = await fs.promises.readFile(file) } catch { return null }
  if (bytes.length < catalogLogHeaderBytes || !bytes.subarray(0, 8).equals(catalogLogMagic)) return null
  const state: LogState = { logId: bytes.subarray(16, 32).toString('hex'), volumes: new Map(), pages: new Map(), meta: {}, lazy: new Map(), pieces: new Map(), lists: new Map(), rootsUnresolved: [], records: 0, skippedBytes: 0 }
  const magic = Buffer.alloc(4)
  magic.writeUInt32LE(logRecordMagic)
  let at = catalogLogHeaderBytes
  while (at + logRecordHeaderBytes <= bytes.length) {
    const length = bytes.readUInt32LE(at + 8)
    const ok = bytes.readUInt32LE(at) === logRecordMagic && at + logRecordHeaderBytes + length <= bytes.length && recordCrc(bytes, length, at) === bytes.readUInt32LE(at + 12)
    if (!ok) {
      const next = bytes.indexOf(magic, at + 1)
      const resume = next < 0 ? bytes.length : next
      state.skippedBytes += resume - at
      at = resume
      continue
    }
    const payload = bytes.subarray(at + logRecordHeaderBytes, at + logRecordHeaderBytes + length)
    try { apply(state, bytes.readUInt16LE(at + 4), payload) } catch { state.skippedBytes += logRecordHeaderBytes + length }
    state.records++
    at += logRecordHeaderBytes + length
  }
  state.skippedBytes += bytes.length - at
  resolveLists(state)
  return state
}

/**
 * Each volume's last logged list made its root again from the pieces the log holds (anywhere in it:
 * a list's pieces are in its record's batch, an earlier one, or the snapshot's). A list that cannot
 * be assembled leaves the root empty (it fails decodeRoot: repair treats it as no proof).
 */
function resolveLists (state: LogState): void {
  for (const [id, list] of state.lists) {
    const row = state.volumes.get(id)
    if (row === undefined) continue
    try {
      row.root = assembleRoot(decodeRootList(list, id), hash => state.pieces.get(hash.toString('hex')))
    } catch (err) {
      row.root = Buffer.alloc(0)
      state.rootsUnresolved.push(`${row.kind} ${row.name} (id ${id}): ${(err as Error).message}`)
    }
  }
  state.lists.clear()
}

function apply (state: LogState, type: number, payload: Buffer): void {
  if (type === logRecordRemoved) {
    const id = Number(payload.readBigUInt64LE(0))
    state.volumes.delete(id)
    state.lists.delete(id)
  } else if (type === logRecordPage) state.pages.set(Number(payload.readBigUInt64LE(0)), { epoch: Number(payload.readBigUInt64LE(8)), entries: Buffer.from(payload.subarray(16)) })
  else if (type === logRecordVolume) {
    const { rootList, ...json } = JSON.parse(payload.toString('utf8')) as Omit<VolumeRow, 'root'> & { root: string | null, rootList?: string }
    const previous = state.volumes.get(json.id)
    // A list (since schema 6) is assembled at the end; a dense root (older logs) is taken as it is.
    if (typeof rootList === 'string') state.lists.set(json.id, Buffer.from(rootList, 'base64'))
    else if (json.root !== null) state.lists.delete(json.id)
    const root = typeof rootList === 'string' ? Buffer.alloc(0) : json.root !== null ? Buffer.from(json.root, 'base64') : previous?.root
    if (root === undefined) return // a row update before any row with its root: nothing to rebuild from
    state.volumes.set(json.id, { ...previous, ...json, root } as VolumeRow)
  } else if (type === logRecordMeta) Object.assign(state.meta, JSON.parse(payload.toString('utf8')))
  else if (type === logRecordLazy) applyLazy(state, payload)
  else if (type === logRecordRootPieces) applyRootPieces(state, payload)
}

function applyRootPieces (state: LogState, payload: Buffer): void {
  for (let at = 0; at < payload.length;) {
    const length = payload.readUInt32LE(at + rootPieceHashBytes)
    if (at + rootPieceHashBytes + 4 + length > payload.length) throw new Error('a root pieces record of a wrong length')
    state.pieces.set(payload.subarray(at, at + rootPieceHashBytes).toString('hex'), Buffer.from(payload.subarray(at + rootPieceHashBytes + 4, at + rootPieceHashBytes + 4 + length)))
    at += rootPieceHashBytes + 4 + length
  }
}

function applyLazy (state: LogState, payload: Buffer): void {
  const jsonBytes = payload.readUInt32LE(0)
  const count = (payload.length - 4 - jsonBytes) / lazyChunkBytes
  if (!Number.isInteger(count) || count < 0) throw new Error('a lazy record of a wrong length')
  const pull = JSON.parse(payload.subarray(4, 4 + jsonBytes).toString('utf8')) as LazyPullRow
  if (typeof pull.uuid !== 'string') throw new Error('a lazy record without its pull')
  const known = state.lazy.get(pull.uuid)
  const absent = known?.absent ?? new Map<number, AbsentChunk>()
  state.lazy.set(pull.uuid, { pull, absent })
  for (let at = 4 + jsonBytes; at < payload.length; at += lazyChunkBytes) {
    const id = Number(payload.readBigUInt64LE(at))
    absent.set(id, { id, hash: Buffer.from(payload.subarray(at + 8, at + 40)), rawBytes: payload.readUInt32LE(at + 40) })
  }
}

export class CatalogLog {
  private fd: number | null = null
  private end = 0
  private snapshotBytes = 0
  /** The catalog does not name this log: never write to it (repair needs it as it is). */
  readonly detached: boolean

  private constructor (private readonly file: string, private readonly catalog: Catalog, private readonly io: FileIo, detached: boolean, private needsSnapshot: boolean) {
    this.detached = detached
  }

  /**
   * Attaches to the pool's log when the catalog names it; creates one (at the first commit) when
   * there is none; stays detached when a log exists that this catalog does not name.
   */
  static open (file: string, catalog: Catalog, io: FileIo): CatalogLog {
    const onDisk = catalogLogId(file)
    const named = catalog.getMeta('log_id')
    if (onDisk === null && fs.existsSync(file) && fs.statSync(file).size > 0) return new CatalogLog(file, catalog, io, true, false)
    if (onDisk === null) return new CatalogLog(file, catalog, io, false, true)
    // A log from before schema 6 lacks the root pieces the catalog's lists name (the upgrade made
    // them): it is rewritten as a snapshot at the first commit, as a new log is.
    const detached = onDisk !== named
    return new CatalogLog(file, catalog, io, detached, !detached && catalog.getMeta(logRootPiecesMeta) !== '1')
  }

  /** Appends, snapshots and lazy records one at a time: each writes at the end the one before it left. */
  private queue: Promise<unknown> = Promise.resolve()
  private async serial<T> (work: () => Promise<T>): Promise<T> {
    const done = this.queue.then(work, work)
    this.queue = done.catch(() => {})
    return await done
  }

  /**
   * Appends a commit's records and makes them durable, then runs `apply` (the commit's SQLite
   * transaction) in the same turn: no snapshot step runs between an append and its transaction.
   */
  async append (batch: LogBatch, apply: () => void = () => {}, timing?: AppendTiming): Promise<void> {
    const asked = performance.now()
    await this.serial(async () => {
      const began = performance.now()
      const withLists = this.withRootLists(batch)
      // Across the awaits of the write and the sync, until `apply` below: no other transaction writes
      // roots or pieces (only commits do, one at a time through this queue; repair runs offline), so
      // the pieces withRootLists found in the catalog are still there when the lists naming them are.
      await this.appendRecords(this.recordsOf(withLists), timing)
      const applying = performance.now()
      apply()
      if (timing !== undefined) {
        timing.waitMs = began - asked
        timing.applyMs = performance.now() - applying
      }
    })
  }

  /**
   * Appends a lazy pull's row and the absent chunks one of its import batches lists, and makes them
   * durable, then runs `apply` (that batch's transaction, import.ts) in the same turn.
   */
  async appendLazy (entry: LazyLogEntry, apply: () => void = () => {}): Promise<void> {
    await this.serial(async () => {
      await this.appendRecords(lazyRecords(entry))
      apply()
    })
  }

  /**
   * The batch with each root as the catalog will store it, a list, and the pieces those lists name
   * that the catalog does not hold: every piece the catalog holds is in this log already (it came with
   * the record of the commit that stored it, or with the snapshot that began the log), so a backup's
   * record carries its two lists and the pieces its disk changed since the last, not its whole root.
   */
  private withRootLists (batch: LogBatch): LogBatch {
    const pieces: RootPiece[] = []
    const carried = new Set<string>()
    const rows = batch.rows.map(({ row, withRoot }) => {
      if (!withRoot) return { row, withRoot }
      const split = splitRoot(row.root, row.id)
      for (const piece of split.pieces) {
        const key = piece.hash.toString('hex')
        if (carried.has(key) || this.catalog.hasRootPiece(piece.hash)) continue
        carried.add(key)
        pieces.push(piece)
      }
      return { row, withRoot, list: split.list }
    })
    return { ...batch, rows, pieces }
  }

  private * recordsOf (batch: LogBatch): Generator<Buffer> {
    // Each row with its identity (schema 3), which commit's rows leave to the catalog.
    const rows = batch.rows.map(({ row, withRoot, list }) => ({ row: row.uuid !== undefined ? row : { ...row, uuid: this.catalog.volumeUuid(row.id) }, withRoot, list }))
    yield * batchRecords({ ...batch, rows })
  }

  private async appendRecords (records: Iterable<Buffer>, timing?: AppendTiming): Promise<void> {
    if (this.detached || this.needsSnapshot) return
    const began = performance.now()
    const fd = await this.descriptor()
    // Written in pieces of about catalogLogWriteBytes, not as one buffer: a commit after writes all
    // over a 1 TiB disk carries 4,096 pages (138 MB), which the commit already holds encoded once for
    // SQLite. The fdatasync after the last piece is what makes the batch durable, as it was for one
    // write (a write of any size may be torn by a power cut; replay skips a torn record by its CRC).
    let at = this.end
    let pieces: Buffer[] = []
    let pieceBytes = 0
    const flush = async (): Promise<void> => {
      if (pieces.length === 0) return
      const bytes = pieces.length === 1 ? pieces[0] : Buffer.concat(pieces, pieceBytes)
      pieces = []
      pieceBytes = 0
      const { bytesWritten } = await this.io.write(fd, bytes, 0, bytes.length, at)
      if (bytesWritten !== bytes.length) throw new Error(`short write to ${path.basename(this.file)}`)
      at += bytes.length
    }
    for (const part of records) {
      pieces.push(part)
      pieceBytes += part.length
      if (pieceBytes >= catalogLogWriteBytes) await flush()
    }
    await flush()
    const syncing = performance.now()
    await this.io.fdatasync(fd)
    if (timing !== undefined) {
      timing.writeMs = syncing - began
      timing.syncMs = performance.now() - syncing
      timing.bytes = at - this.end
    }
    this.end = at
  }

  /** The snapshot running in the background, if any (one at a time). */
  private background: Promise<void> | null = null
  /** Set by close(): a snapshot in the background stops and leaves the old log as it is. */
  private closing = false
  /** Test seam: awaited by a snapshot after it read the catalog, before it copies the tail and renames. */
  beforeTail: (() => Promise<void>) | null = null

  /**
   * After a commit: rewrites the log as a snapshot when it has none yet (awaited: nothing holds the
   * catalog's rows until then) or has grown past its bound (in the background: the commit returns,
   * and the ones after it append to the old file meanwhile). `failed` is told why a background
   * snapshot failed; the old log stays in use.
   */
  async afterCommit (failed: (err: Error) => void = () => {}, done: (bytesBefore: number, bytesAfter: number, ms: number) => void = () => {}): Promise<void> {
    if (this.detached) return
    if (this.needsSnapshot) { await this.snapshot(); return }
    if (this.background !== null || this.end <= Math.max(catalogLogBytesMin, 2 * this.snapshotBytes)) return
    const before = this.end
    const started = performance.now()
    const running = this.snapshotNow().then(() => { done(before, this.end, performance.now() - started) }, failed).finally(() => { this.background = null })
    this.background = running
  }

  /** Waits for a snapshot running in the background, if any (tests; close). */
  async settled (): Promise<void> { await this.background?.catch(() => {}) }

  /**
   * Writes the catalog's volumes, pages, epoch counter and lazy pulls to a new log and renames it over
   * the old. A log that has none yet is written in one serial step (appends are skipped until it
   * exists); else appends go on to the old file meanwhile and are copied over at the end.
   */
  async snapshot (): Promise<void> {
    // After a rewrite in the background, if any: two would write the same temporary file. This one
    // counts as the rewrite in the background until it ends (set in the turn the last wait ended), so
    // afterCommit starts none beside it.
    while (this.background !== null) await this.settled()
    const running = this.snapshotNow()
    const mine: Promise<void> = running.catch(() => {}).finally(() => { if (this.background === mine) this.background = null })
    this.background = mine
    await running
  }

  private async snapshotNow (): Promise<void> {
    if (this.needsSnapshot) { await this.serial(async () => { await this.rewrite(null) }); return }
    // Where the old file ends now; every append before this step had its transaction applied.
    const tailStart = await this.serial(async () => { await this.descriptor(); return this.end })
    await this.rewrite(tailStart)
  }

  /** The snapshot's work; `tailStart` null: inside a serial step already, nothing to copy over. */
  private async rewrite (tailStart: number | null): Promise<void> {
    const logId = this.catalog.getMeta('log_id') ?? crypto.randomBytes(16).toString('hex')
    const temporary = `${this.file}.tmp`
    const fd = await this.io.open(temporary, 'w', 0o600)
    let at = 0
    const write = async (bytes: Buffer) => {
      if (this.closing) throw new Error('the pool is closing')
      const { bytesWritten } = await this.io.write(fd, bytes, 0, bytes.length, at)
      if (bytesWritten !== bytes.length) throw new Error(`short write to ${path.basename(temporary)}`)
      at += bytes.length
    }
    let renamed = false
    let copied = tailStart
    const finish = async (): Promise<void> => {
      // The records appended since the last copy, after what was read of the catalog; then the switch.
      if (copied !== null && this.fd !== null && this.end > copied) await this.copyTail(this.fd, copied, this.end, write)
      if (this.closing) throw new Error('the pool is closing')
      await this.io.fdatasync(fd)
      await this.io.close(fd)
      if (this.fd !== null) { await this.io.close(this.fd); this.fd = null }
      // The catalog names the log before the log exists under its name: a crash in between leaves no
      // log (made again at the next commit), never a log this catalog does not name.
      if (this.catalog.getMeta('log_id') !== logId) this.catalog.setMeta('log_id', logId)
      if (this.catalog.getMeta(logRootPiecesMeta) !== '1') this.catalog.setMeta(logRootPiecesMeta, '1')
      await fs.promises.rename(temporary, this.file)
      renamed = true
      await this.io.syncDirectory(path.dirname(this.file))
      this.end = at
      this.snapshotBytes = at
      this.needsSnapshot = false
    }
    try {
      await this.writeCatalog(logId, write)
      if (this.beforeTail !== null) await this.beforeTail()
      if (tailStart === null) await finish()
      else {
        // What can be done before the final serial step is, so commits wait for little there (issue
        // #21: at 3,000 backups the whole new file's fdatasync in that step held backups 0.5-0.7 s):
        // the records appended so far are copied (bytes below the end never change: an append writes
        // at the end, which moves only once it is durable), and the new file is synced.
        for (let round = 0; round < 8 && copied !== null && this.fd !== null && this.end - copied > catalogLogWriteBytes; round++) {
          const to = this.end
          await this.copyTail(this.fd, copied, to, write)
          // eslint-disable-next-line require-atomic-updates -- copied is this rewrite's own, read and set only by this loop and then by finish, one after the other
          copied = to
        }
        await this.io.fdatasync(fd)
        await this.serial(finish)
      }
    } finally {
      if (!renamed) {
        await this.io.close(fd).catch(() => {})
        await fs.promises.rm(temporary, { force: true }).catch(() => {})
      }
    }
  }

  /** The catalog's volume rows, epoch counter, pages and lazy pulls, read and written a batch at a time. */
  private async writeCatalog (logId: string, write: (bytes: Buffer) => Promise<void>): Promise<void> {
    await write(header(logId))
    await write(encodeBatch({ removed: [], pages: [], rows: [], meta: { next_epoch: this.catalog.getMeta('next_epoch') ?? '1', journal_seq: this.catalog.getMeta('journal_seq') ?? '0' } }))
    // The rows encoded and written a slice at a time (each row's root is 44 KB of JSON at 1 TiB: one
    // step for every row held the event loop about 1 s at 1,200 backups).
    // Each slice's roots are read in its own step (issue #21: not every root at once), as the pages
    // are: a root changed since the rows were read is the newer record's, in the tail copied after; a
    // volume removed since is left out (its removal is in the tail too).
    // A root is written as the catalog stores it (a list, or dense in an older row), damaged or not.
    const rows = this.catalog.volumes()
    for (let i = 0; i < rows.length; i += logSnapshotBatchRows) {
      const slice = []
      for (const row of rows.slice(i, i + logSnapshotBatchRows)) {
        const stored = this.catalog.storedRoot(row.id)
        if (stored === undefined) continue
        if (isRootList(stored)) slice.push({ row: { ...row, root: Buffer.alloc(0) }, withRoot: true, list: stored })
        else slice.push({ row: { ...row, root: stored }, withRoot: true })
      }
      await write(encodeBatch({ removed: [], pages: [], rows: slice, meta: {} }))
    }
    // Every root piece, a batch at a time in hash order. A piece the new file's lists need is here or
    // in the tail copied after: one stored since before the snapshot began and still stored at its end
    // is read by one of these batches (the order is by hash: a row present throughout is not passed
    // over); one stored (again) after the snapshot began came with the record of the commit that
    // stored it, which is in the tail. One gone by the end is named by no list the catalog then holds.
    for (let after: Buffer = Buffer.alloc(0); ;) {
      const batch = this.catalog.rootPiecesAfter(after, rootPiecesPerRecord)
      if (batch.length === 0) break
      for (const part of pieceRecords(batch.map(row => ({ hash: row.hash, bytes: row.ids })))) await write(part)
      after = batch[batch.length - 1].hash
    }
    const ids = this.catalog.pageIds()
    for (let i = 0; i < ids.length; i += logSnapshotBatchPages) {
      const pages = []
      for (const id of ids.slice(i, i + logSnapshotBatchPages)) { const row = this.catalog.page(id); if (row !== undefined) pages.push(row) }
      await write(encodeBatch({ removed: [], pages, rows: [], meta: {} }))
    }
    for (const pull of this.catalog.lazyPulls()) {
      // In pieces of a record each, read by id (no statement stays open across the writes).
      for (let after = 0, first = true; ; first = false) {
        const absent = this.catalog.lazyAbsentAfter(pull.uuid, after, lazyRecordChunksMax)
        if (absent.length === 0 && !first) break
        for (const part of lazyRecords({ pull, absent })) await write(part)
        if (absent.length < lazyRecordChunksMax) break
        after = absent[absent.length - 1].id
      }
    }
  }

  /** Copies bytes [from, to) of the old log (records appended during a snapshot) through `write`. */
  private async copyTail (fd: number, from: number, to: number, write: (bytes: Buffer) => Promise<void>): Promise<void> {
    const buffer = Buffer.alloc(Math.min(catalogLogWriteBytes, to - from))
    for (let at = from; at < to;) {
      const length = Math.min(buffer.length, to - at)
      const { bytesRead } = await this.io.read(fd, buffer, 0, length, at)
      if (bytesRead !== length) throw new Error(`short read of ${path.basename(this.file)}`)
      await write(buffer.subarray(0, length))
      at += length
    }
  }

  private async descriptor (): Promise<number> {
    if (this.fd === null) {
      this.fd = await this.io.open(this.file, 'r+')
      this.end = (await this.io.fstat(this.fd)).size
      if (this.snapshotBytes === 0) this.snapshotBytes = this.end
    }
    return this.fd
  }

  async close (): Promise<void> {
    this.closing = true
    await this.settled()
    if (this.fd !== null) await this.io.close(this.fd).catch(() => {})
    this.fd = null
  }
}
