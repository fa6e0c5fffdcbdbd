/**
 * The catalog: volumes, map pages and extents in SQLite (WAL mode, synchronous=FULL), through
 * better-sqlite3. It sits beside the storage stack: the pool reads it at open and writes to it at
 * commit. Every call is synchronous and short; callers keep it off hot paths.
 *
 * The catalog connection also holds the pool lock: it runs in EXCLUSIVE locking mode, so the first
 * transaction takes an fcntl lock on the database that only this process holds until it closes or
 * dies. A second process (a second daemon, an offline fsck) fails to open it with SQLITE_BUSY.
 *
 * Errors: openCatalog throws BUSY when another process holds the pool, CORRUPT when the file is not a
 * catalog of ours.
 */
import crypto from 'node:crypto'
import fs from 'node:fs'
import Database from 'better-sqlite3'
import { VdiskError, corrupt } from '../errors'
import { catalogFreeBytesMax, catalogWalCheckpointPages, importAbandonedMs } from '../limits'
import { CheckedPieces, assembleRoot, decodeRootList, isRootList, listedPieces, pieceHash, splitRoot } from './root-pieces'

export type VolumeKind = 'disk' | 'backup' | 'clone'

export interface VolumeRow {
  id: number
  kind: VolumeKind
  name: string
  size: number
  createdMs: number
  mtimeMs: number
  /** backup: the volume it was taken from; clone: the backup it stands on; disk: null. */
  sourceId: number | null
  /** The source's kind and name when this volume was made (the source may be gone since). */
  sourceLabel: string | null
  /** Pages whose epoch equals this are this volume's alone and may be changed in place. */
  epoch: number
  /** Page ids, u64 little-endian (see format/map-format.ts). */
  root: Buffer
  allocatedBlocks: number
  storedBytes: number
  activeExtent: number | null
  /** Owner, group and permission bits (st_mode & 0o7777), as chown/chmod left them (schema 2). */
  uid: number
  gid: number
  mode: number
  /**
   * The volume's stable identity (schema 3): a random UUID given when its row is first inserted, or
   * the one an imported backup keeps from its stream. Absent in rows built by commit (the catalog
   * fills it in at insert, see volumeUuid) and in logs written before schema 3.
   */
  uuid?: string
  /** Backups: `vdiskfs protect` set it; prune keeps it and rm refuses it until unprotected (schema 4). */
  protected?: boolean
  /** A free text the admin gave (`vdiskfs note`), or null (schema 4). */
  note?: string | null
  /**
   * The identity (uuid) of the volume this one was made from, kept after that volume is gone: a
   * backup's disk or clone, a clone's backup; for an imported backup, its source's on the exporting
   * host, as the stream carries it. Prune groups backups by it. Null when unknown (schema 4).
   */
  sourceUuid?: string | null
  /** Backups: the consistency group it was taken in (`vdiskfs backup IMAGE... --group NAME`), or null (schema 4). */
  groupName?: string | null
}

/** A volume's row without its root (Catalog.volumes; Catalog.root reads the root). */
export type VolumeInfo = Omit<VolumeRow, 'root'>

/** A partial import (src/volume/import.ts): kept under the stream's key until the backup appears. */
export interface ImportRow { key: string, name: string, size: number, blockBytes: number, baseUuid: string | null, startedMs: number, updatedMs: number }

export interface ChunkRow { id: number, hash: Buffer, packId: number, offset: number, storedBytes: number, rawBytes: number, compressed: boolean }

/**
 * A chunk row with pack id 0 (no pack has id 0) is absent: a lazy pull (volume/lazy.ts) named it, its
 * bytes are still in the remote store. It has its hash and raw size, no place; the first store of a
 * block with its hash (the hydrator's, or any seal or import's) fills it in under the same id.
 */
export const absentPackId = 0

/** A lazy pull (volume/lazy.ts): the backup it makes (its uuid), where its chunks come from, how many it lacked. */
export interface LazyPullRow { uuid: string, importKey: string, remote: string, manifest: string, chunks: number, startedMs: number }

/** An absent chunk as catalog.log keeps it (catalog-log.ts): its id, the block's BLAKE3 and size. */
export interface AbsentChunk { id: number, hash: Buffer, rawBytes: number }

export interface PageRow { id: number, epoch: number, entries: Buffer }

/** A delta extent on disk. It is active while a volume's active_extent names it, frozen after. */
export interface ExtentRow { id: number, volumeId: number, createdMs: number }

/**
 * 2 added volumes.owner_uid, owner_gid and mode; 3 added volumes.uuid and the imports and
 * import_blocks tables; 4 added volumes.protected, note, source_uuid and group_name. An older catalog is migrated
 * at open, one version at a time.
 */
const catalogSchemaVersion = 6

const schema = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS volumes (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL CHECK (kind IN ('disk', 'backup', 'clone')),
  name TEXT NOT NULL,
  size INTEGER NOT NULL,
  created_ms INTEGER NOT NULL,
  mtime_ms INTEGER NOT NULL,
  source_id INTEGER,
  source_label TEXT,
  epoch INTEGER NOT NULL,
  root BLOB NOT NULL,
  allocated_blocks INTEGER NOT NULL,
  stored_bytes INTEGER NOT NULL,
  active_extent INTEGER,
  owner_uid INTEGER,
  owner_gid INTEGER,
  mode INTEGER,
  uuid TEXT,
  protected INTEGER,
  note TEXT,
  source_uuid TEXT,
  group_name TEXT,
  UNIQUE (kind, name)
);
-- Each volume's map root (schema 5): apart from its row, so that a row's other fields (its counters,
-- changed in every volume reading a page a seal pass repoints) are rewritten without the root's 32 KiB
-- at 1 TiB (issue #21). volumes.root is empty then; a row whose root is not here (an older catalog's,
-- salvaged by repair) keeps it in volumes.root.
-- Since schema 6 a roots row is a list of pieces (catalog/root-pieces.ts), each piece 256 page ids
-- stored once by its SHA-256 in root_pieces and shared by every root holding the same bytes; its
-- references (one per list naming it) in root_piece_refs, changed in the transaction that writes or
-- deletes a list, the piece deleted with its last one (issue #21: a backup costs the pieces that changed).
CREATE TABLE IF NOT EXISTS roots (id INTEGER PRIMARY KEY, root BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS root_pieces (hash BLOB PRIMARY KEY, ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS root_piece_refs (hash BLOB PRIMARY KEY, refs INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pages (id INTEGER PRIMARY KEY, epoch INTEGER NOT NULL, entries BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS packs (id INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
  id INTEGER PRIMARY KEY,
  hash BLOB NOT NULL UNIQUE,
  pack_id INTEGER NOT NULL,
  offset INTEGER NOT NULL,
  stored_bytes INTEGER NOT NULL,
  raw_bytes INTEGER NOT NULL,
  compressed INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_pack ON chunks (pack_id);
CREATE TABLE IF NOT EXISTS extents (
  id INTEGER PRIMARY KEY,
  volume_id INTEGER NOT NULL,
  created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS retired_chunks (id INTEGER PRIMARY KEY, pack_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ref_counts (id INTEGER PRIMARY KEY CHECK (id = 1), fingerprint TEXT NOT NULL, sum TEXT NOT NULL, data BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS retired_by_pack ON retired_chunks (pack_id);
CREATE TABLE IF NOT EXISTS imports (
  key TEXT PRIMARY KEY,
  name TEXT NOT NULL,
  size INTEGER NOT NULL,
  block_bytes INTEGER NOT NULL,
  base_uuid TEXT,
  started_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS import_blocks (
  key TEXT NOT NULL,
  block INTEGER NOT NULL,
  chunk_id INTEGER,
  PRIMARY KEY (key, block)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS lazy_pulls (
  uuid TEXT PRIMARY KEY,
  import_key TEXT NOT NULL,
  remote TEXT NOT NULL,
  manifest TEXT NOT NULL,
  chunks INTEGER NOT NULL,
  started_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS lazy_chunks (
  uuid TEXT NOT NULL,
  chunk_id INTEGER NOT NULL,
  PRIMARY KEY (uuid, chunk_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS lazy_chunks_by_chunk ON lazy_chunks (chunk_id);
`

/** After the migrations (the column exists only from schema 3 on). */
const uuidIndex = 'CREATE UNIQUE INDEX IF NOT EXISTS volumes_by_uuid ON volumes (uuid)'

/** Rows per multi-row statement (runRows, chunksByHashes): far below SQLite's 32 766 variables. */
const multiRowMax = 256

export class Catalog {
  private readonly db: Database.Database
  private readonly statements: ReturnType<Catalog['prepare']>

  private constructor (db: Database.Database) {
    this.db = db
    this.statements = this.prepare()
    this.pageBytes = db.pragma('page_size', { simple: true }) as number
  }

  /** Opens (creating when `create`) the catalog and takes the pool lock. */
  static open (file: string, create: boolean): Catalog {
    let db: Database.Database
    try {
      db = new Database(file, { fileMustExist: !create, timeout: 0 })
    } catch (err) {
      throw new VdiskError('IO', `cannot open catalog ${file}: ${(err as Error).message}`, { cause: err })
    }
    try {
      db.pragma('locking_mode = EXCLUSIVE')
      // Before the first table exists (a new catalog): pages freed by gc go back to the filesystem.
      // An older catalog keeps auto_vacuum off and reuses its free pages instead.
      db.pragma('auto_vacuum = INCREMENTAL')
      db.pragma('journal_mode = WAL')
      db.pragma('synchronous = FULL')
      // Every fsync is a commit of a few pages (a 32 KiB map page and a volume row): the WAL is
      // checkpointed often (every catalogWalCheckpointPages) and cut back afterwards, so it stays about
      // a MiB instead of growing with the writes. Not by SQLite inside the commit that crosses the mark
      // (issue #21: a backup's transaction then paid the checkpoint's copy and fsync), but by
      // `afterWrite`, once the event loop is free. journal_size_limit 0: a reset WAL starts empty, so
      // its size says how many frames it holds. SQLite's own stays as a backstop at four times the mark,
      // for writes outside transaction() (single statements) that never reach afterWrite.
      db.pragma(`wal_autocheckpoint = ${4 * catalogWalCheckpointPages}`)
      db.pragma('journal_size_limit = 0')
      // The first write takes the exclusive lock and keeps it until close.
      db.exec('BEGIN IMMEDIATE; COMMIT;')
    } catch (err) {
      db.close()
      const code = (err as { code?: string }).code
      if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') {
        throw new VdiskError('BUSY', 'the pool is in use by another vdiskfs process (is it mounted elsewhere?)', { cause: err })
      }
      if (code === 'SQLITE_NOTADB' || code === 'SQLITE_CORRUPT') throw corrupt(`catalog ${file} is damaged (${(err as Error).message}): run vdiskfs repair on the pool`, err)
      throw new VdiskError('IO', `cannot open catalog ${file}: ${(err as Error).message}`, { cause: err })
    }
    let migrated: RootsMigration | null = null
    try {
      db.exec(schema)
      const version = db.prepare('SELECT value FROM meta WHERE key = ?').pluck().get('schema_version') as string | undefined
      if (version === undefined) {
        db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('schema_version', String(catalogSchemaVersion))
        db.prepare('INSERT INTO meta (key, value) VALUES (?, ?)').run('next_epoch', '1')
      } else if (Number(version) >= 1 && Number(version) <= 5) {
        if (Number(version) <= 1) migrateFrom1(db, file)
        if (Number(version) <= 2) migrateFrom2(db)
        if (Number(version) <= 3) migrateFrom3(db)
        if (Number(version) <= 4) migrateFrom4(db)
        migrated = migrateFrom5(db)
      } else if (Number(version) !== catalogSchemaVersion) {
        throw new VdiskError('INVALID', `catalog schema version ${version} is not supported (this vdiskfs reads ${catalogSchemaVersion})`)
      }
      db.exec(uuidIndex)
      dropAbandonedImports(db, Date.now())
    } catch (err) {
      db.close()
      if (err instanceof VdiskError) throw err
      throw corrupt(`catalog ${file} is damaged (${(err as Error).message}): run vdiskfs repair on the pool`, err)
    }
    const catalog = new Catalog(db)
    catalog.rootsMigration = migrated
    // The dense roots' pages the upgrade freed go back to the filesystem after the next transaction.
    catalog.deleted = migrated !== null && migrated.roots > 0
    return catalog
  }

  /** What the upgrade to schema 6 did at this open (roots made lists), or null: logged by the pool. */
  rootsMigration: RootsMigration | null = null

  // long: a table of prepared statements, one short entry each
  private prepare () {
    const db = this.db
    return {
      // Without the roots (issue #21: the join read every root's 32 KiB blob at every open); root() reads one.
      volumes: db.prepare(`SELECT id, kind, name, size, created_ms, mtime_ms, source_id, source_label, epoch, allocated_blocks, stored_bytes,
        active_extent, owner_uid, owner_gid, mode, uuid, protected, note, source_uuid, group_name FROM volumes ORDER BY id`),
      root: db.prepare('SELECT COALESCE(r.root, v.root) FROM volumes v LEFT JOIN roots r ON r.id = v.id WHERE v.id = ?').pluck(),
      storedRoot: db.prepare('SELECT root FROM roots WHERE id = ?').pluck(),
      putRoot: db.prepare('INSERT OR REPLACE INTO roots (id, root) VALUES (?, ?)'),
      rootPiece: db.prepare('SELECT ids FROM root_pieces WHERE hash = ?').pluck(),
      hasRootPiece: db.prepare('SELECT 1 FROM root_pieces WHERE hash = ?').pluck(),
      // A piece already stored keeps its row, unless its bytes differ from these (proven by their hash): then they heal it.
      putRootPiece: db.prepare('INSERT INTO root_pieces (hash, ids) VALUES (?, ?) ON CONFLICT (hash) DO UPDATE SET ids = excluded.ids WHERE ids != excluded.ids'),
      refRootPiece: db.prepare('INSERT INTO root_piece_refs (hash, refs) VALUES (?, 1) ON CONFLICT (hash) DO UPDATE SET refs = refs + 1'),
      unrefRootPiece: db.prepare('UPDATE root_piece_refs SET refs = refs - 1 WHERE hash = ? RETURNING refs').pluck(),
      deleteRootPiece: db.prepare('DELETE FROM root_pieces WHERE hash = ?'),
      deleteRootPieceRefs: db.prepare('DELETE FROM root_piece_refs WHERE hash = ?'),
      rootPiecesAfter: db.prepare('SELECT hash, ids FROM root_pieces WHERE hash > ? ORDER BY hash LIMIT ?'),
      deleteRoot: db.prepare('DELETE FROM roots WHERE id = ?'),
      insertVolume: db.prepare(`INSERT INTO volumes (id, kind, name, size, created_ms, mtime_ms, source_id, source_label, epoch, root, allocated_blocks, stored_bytes, active_extent, owner_uid, owner_gid, mode, uuid, protected, note, source_uuid, group_name)
        VALUES (@id, @kind, @name, @size, @createdMs, @mtimeMs, @sourceId, @sourceLabel, @epoch, @root, @allocatedBlocks, @storedBytes, @activeExtent, @uid, @gid, @mode, @uuid, @protected, @note, @sourceUuid, @groupName)`),
      volumeUuid: db.prepare('SELECT uuid FROM volumes WHERE id = ?').pluck(),
      volumeByUuid: db.prepare('SELECT id FROM volumes WHERE uuid = ?').pluck(),
      imports: db.prepare('SELECT key, name, size, block_bytes AS blockBytes, base_uuid AS baseUuid, started_ms AS startedMs, updated_ms AS updatedMs FROM imports ORDER BY started_ms'),
      putImport: db.prepare('INSERT OR REPLACE INTO imports (key, name, size, block_bytes, base_uuid, started_ms, updated_ms) VALUES (@key, @name, @size, @blockBytes, @baseUuid, @startedMs, @updatedMs)'),
      touchImport: db.prepare('UPDATE imports SET updated_ms = ? WHERE key = ?'),
      hasImport: db.prepare('SELECT 1 FROM imports WHERE key = ?').pluck(),
      deleteImport: db.prepare('DELETE FROM imports WHERE key = ?'),
      importBlocks: db.prepare('SELECT block, chunk_id AS chunkId FROM import_blocks WHERE key = ? AND block >= ? AND block <= ? ORDER BY block LIMIT ?'),
      importBlockCount: db.prepare('SELECT COUNT(*) FROM import_blocks WHERE key = ?').pluck(),
      putImportBlock: db.prepare('INSERT OR REPLACE INTO import_blocks (key, block, chunk_id) VALUES (?, ?, ?)'),
      deleteImportBlocks: db.prepare('DELETE FROM import_blocks WHERE key = ?'),
      deleteImportBlockRange: db.prepare('DELETE FROM import_blocks WHERE key = ? AND block >= ? AND block <= ?'),
      lazyPulls: db.prepare('SELECT uuid, import_key AS importKey, remote, manifest, chunks, started_ms AS startedMs FROM lazy_pulls ORDER BY started_ms'),
      putLazyPull: db.prepare('INSERT OR REPLACE INTO lazy_pulls (uuid, import_key, remote, manifest, chunks, started_ms) VALUES (@uuid, @importKey, @remote, @manifest, @chunks, @startedMs)'),
      deleteLazyPull: db.prepare('DELETE FROM lazy_pulls WHERE uuid = ?'),
      deleteLazyChunksOf: db.prepare('DELETE FROM lazy_chunks WHERE uuid = ?'),
      putLazyChunk: db.prepare('INSERT OR IGNORE INTO lazy_chunks (uuid, chunk_id) VALUES (?, ?)'),
      lazyChunkCounts: db.prepare('SELECT uuid, COUNT(*) AS n FROM lazy_chunks GROUP BY uuid'),
      lazyChunkCount: db.prepare('SELECT COUNT(*) FROM lazy_chunks WHERE uuid = ?').pluck(),
      lazyPullsOfChunk: db.prepare('SELECT uuid FROM lazy_chunks WHERE chunk_id = ?').pluck(),
      deleteLazyChunk: db.prepare('DELETE FROM lazy_chunks WHERE chunk_id = ?'),
      presentLazyChunks: db.prepare('SELECT l.chunk_id FROM lazy_chunks l LEFT JOIN chunks c ON c.id = l.chunk_id WHERE c.id IS NULL OR c.pack_id != 0').pluck(),
      absentChunkCount: db.prepare('SELECT COUNT(*) FROM chunks WHERE pack_id = 0').pluck(),
      lazyAbsentAfter: db.prepare('SELECT c.id AS id, c.hash AS hash, c.raw_bytes AS rawBytes FROM lazy_chunks l JOIN chunks c ON c.id = l.chunk_id WHERE l.uuid = ? AND l.chunk_id > ? AND c.pack_id = 0 ORDER BY l.chunk_id LIMIT ?'),
      fillChunk: db.prepare('UPDATE chunks SET pack_id = ?, offset = ?, stored_bytes = ?, raw_bytes = ?, compressed = ? WHERE id = ? AND pack_id = 0'),
      heldChunkIds: db.prepare('SELECT DISTINCT chunk_id FROM import_blocks WHERE chunk_id IS NOT NULL').pluck(),
      updateVolume: db.prepare(`UPDATE volumes SET kind = @kind, name = @name, size = @size, mtime_ms = @mtimeMs, epoch = @epoch,
        root = X'', allocated_blocks = @allocatedBlocks, stored_bytes = @storedBytes, active_extent = @activeExtent,
        owner_uid = @uid, owner_gid = @gid, mode = @mode, protected = @protected, note = @note, source_label = @sourceLabel WHERE id = @id`),
      updateVolumeNoRoot: db.prepare(`UPDATE volumes SET kind = @kind, name = @name, size = @size, mtime_ms = @mtimeMs, epoch = @epoch,
        allocated_blocks = @allocatedBlocks, stored_bytes = @storedBytes, active_extent = @activeExtent,
        owner_uid = @uid, owner_gid = @gid, mode = @mode, protected = @protected, note = @note, source_label = @sourceLabel WHERE id = @id`),
      deleteVolume: db.prepare('DELETE FROM volumes WHERE id = ?'),
      page: db.prepare('SELECT id, epoch, entries FROM pages WHERE id = ?'),
      putPage: db.prepare('INSERT OR REPLACE INTO pages (id, epoch, entries) VALUES (?, ?, ?)'),
      pageIds: db.prepare('SELECT id FROM pages').pluck(),
      deletePage: db.prepare('DELETE FROM pages WHERE id = ?'),
      maxPageId: db.prepare('SELECT COALESCE(MAX(id), 0) FROM pages').pluck(),
      maxVolumeId: db.prepare(`SELECT MAX(COALESCE((SELECT MAX(id) FROM volumes), 0), COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'volume_id_high'), 0))`).pluck(),
      maxExtentId: db.prepare('SELECT COALESCE(MAX(id), 0) FROM extents').pluck(),
      extents: db.prepare('SELECT id, volume_id AS volumeId, created_ms AS createdMs FROM extents ORDER BY id'),
      insertExtent: db.prepare('INSERT INTO extents (id, volume_id, created_ms) VALUES (?, ?, ?)'),
      deleteExtent: db.prepare('DELETE FROM extents WHERE id = ?'),
      chunk: db.prepare('SELECT id, hash, pack_id AS packId, offset, stored_bytes AS storedBytes, raw_bytes AS rawBytes, compressed FROM chunks WHERE id = ?'),
      chunkByHash: db.prepare('SELECT id FROM chunks WHERE hash = ?').pluck(),
      insertChunk: db.prepare('INSERT INTO chunks (id, hash, pack_id, offset, stored_bytes, raw_bytes, compressed) VALUES (?, ?, ?, ?, ?, ?, ?)'),
      moveChunk: db.prepare('UPDATE chunks SET pack_id = ?, offset = ? WHERE id = ?'),
      deleteChunk: db.prepare('DELETE FROM chunks WHERE id = ?'),
      chunkIds: db.prepare('SELECT id FROM chunks').pluck(),
      chunkIdsAbove: db.prepare('SELECT id FROM chunks WHERE id > ?').pluck(),
      hasChunk: db.prepare('SELECT 1 FROM chunks WHERE id = ?').pluck(),
      chunksInPack: db.prepare('SELECT id, hash, pack_id AS packId, offset, stored_bytes AS storedBytes, raw_bytes AS rawBytes, compressed FROM chunks WHERE pack_id = ?'),
      chunksBetween: db.prepare('SELECT id, hash, pack_id AS packId, offset, stored_bytes AS storedBytes, raw_bytes AS rawBytes, compressed FROM chunks WHERE id BETWEEN ? AND ?'),
      packUsage: db.prepare('SELECT p.id AS id, COALESCE(SUM(c.stored_bytes), 0) AS liveBytes, COUNT(c.id) AS chunks FROM packs p LEFT JOIN chunks c ON c.pack_id = p.id GROUP BY p.id'),
      packUsageOf: db.prepare('SELECT p.id AS id, COALESCE(SUM(c.stored_bytes), 0) AS liveBytes, COUNT(c.id) AS chunks FROM packs p LEFT JOIN chunks c ON c.pack_id = p.id WHERE p.id = ? GROUP BY p.id'),
      packIdsAbove: db.prepare('SELECT id FROM packs WHERE id > ?').pluck(),
      maxChunkId: db.prepare(`SELECT MAX(COALESCE((SELECT MAX(id) FROM chunks), 0), COALESCE((SELECT MAX(id) FROM retired_chunks), 0),
        COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'chunk_id_high'), 0))`).pluck(),
      maxPackId: db.prepare(`SELECT MAX(COALESCE((SELECT MAX(id) FROM packs), 0), COALESCE((SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'pack_id_high'), 0))`).pluck(),
      retireChunk: db.prepare('INSERT OR REPLACE INTO retired_chunks (id, pack_id) SELECT id, pack_id FROM chunks WHERE id = ?'),
      isRetired: db.prepare('SELECT 1 FROM retired_chunks WHERE id = ?').pluck(),
      clearRetired: db.prepare('DELETE FROM retired_chunks WHERE pack_id = ?'),
      retireUnindexed: db.prepare('INSERT OR REPLACE INTO retired_chunks (id, pack_id) VALUES (?, ?)'),
      insertPack: db.prepare('INSERT INTO packs (id, created_ms) VALUES (?, ?)'),
      deletePack: db.prepare('DELETE FROM packs WHERE id = ?'),
      getMeta: db.prepare('SELECT value FROM meta WHERE key = ?').pluck(),
      setMeta: db.prepare('INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)')
    }
  }

  close (): void {
    if (this.db.open) this.db.close()
    if (this.walFd !== null) { try { fs.closeSync(this.walFd.fd) } catch {} this.walFd = null }
  }

  /** Runs `work` in one transaction: all of it is durable when this returns, or none of it. */
  transaction<T> (work: () => T): T {
    const result = this.db.transaction(work)()
    if (this.deleted && !this.db.inTransaction) this.reclaim()
    // A synced transaction's fsync of the WAL covers the unsynced ones before it. (This only decides
    // when a checkpoint runs; a checkpoint syncs the WAL first whatever came before, so no durability
    // rests on it.)
    if (!this.unsyncedNow && !this.db.inTransaction) this.unsyncedDurable = this.unsynced
    if (!this.db.inTransaction) this.afterWrite()
    return result
  }

  /**
   * Runs `work` in one transaction that SQLite appends to the WAL without syncing it (synchronous =
   * NORMAL for this one: still all or nothing, never a damaged catalog), so that the event loop does
   * not wait for an fsync: it is durable only once a syncWal() started after it resolved. For the
   * commit (volume/commit.ts), which awaits syncWal() before it returns, so that nothing acts on the
   * transaction's durability before it is durable. No checkpoint runs inside it (SQLite's own mark is
   * off meanwhile) nor after it until that sync is done (afterWrite, syncWal): a checkpoint first syncs
   * the WAL, and would do on the event loop the fsync this moves to the thread pool (issue #20: 4-22 ms
   * at a time under 4k random writes).
   */
  transactionUnsynced<T> (work: () => T): T {
    this.db.pragma('synchronous = NORMAL')
    this.db.pragma('wal_autocheckpoint = 0')
    this.unsyncedNow = true
    try {
      return this.transaction(work)
    } finally {
      this.unsyncedNow = false
      this.db.pragma(`wal_autocheckpoint = ${4 * catalogWalCheckpointPages}`)
      this.db.pragma('synchronous = FULL')
    }
  }

  /** Inside transactionUnsynced. */
  private unsyncedNow = false
  /** Unsynced transactions so far, and how many of them are known durable (a syncWal started after them, or a synced transaction after them). */
  private unsynced = 0
  private unsyncedDurable = 0

  /**
   * Makes every transaction run so far durable: an fdatasync of the WAL through `fdatasync` (in the
   * thread pool). The WAL's descriptor is ours and kept; it is opened again when the file at the path is
   * no longer the one it names (SQLite deletes the WAL only when its last connection closes, which is
   * this one, but a sync of a file that is not the WAL would make nothing durable).
   */
  async syncWal (fdatasync: (fd: number) => Promise<void>): Promise<void> {
    const file = `${this.db.name}-wal`
    const now = fs.statSync(file)
    if (this.walFd !== null && (this.walFd.ino !== now.ino || this.walFd.dev !== now.dev)) {
      try { fs.closeSync(this.walFd.fd) } catch {}
      this.walFd = null
    }
    if (this.walFd === null) {
      const fd = fs.openSync(file, 'r')
      const st = fs.fstatSync(fd)
      this.walFd = { fd, ino: st.ino, dev: st.dev }
    }
    const covers = this.unsynced
    await fdatasync(this.walFd.fd)
    this.unsyncedDurable = Math.max(this.unsyncedDurable, covers)
    // The checkpoint the transactions since the last one may have earned, now that the WAL is synced.
    if (this.db.open && !this.db.inTransaction) this.afterWrite()
  }

  private walFd: { fd: number, ino: number, dev: number } | null = null

  /** WAL frames at which a checkpoint is queued after a transaction (0: never; a test that counts WAL bytes). */
  walCheckpointPages = catalogWalCheckpointPages
  /** Checkpoints run by afterWrite, and their time (ms), for the daemon's trace. */
  readonly checkpoints = { count: 0, ms: 0, frames: 0 }
  private checkpointQueued = false

  /**
   * After a transaction: when the WAL holds walCheckpointPages frames or more, a passive checkpoint
   * runs in the event loop's next turn, after what the transaction's caller does in this one (a
   * backup's reply). It is synchronous there, as SQLite's own checkpoint in a commit was; the WAL
   * holds every committed transaction meanwhile (synchronous = FULL), so nothing waits for it. A
   * transaction in between is no concern: each runs in one synchronous step, and the checkpoint
   * runs only outside one (and not once the catalog is closed).
   */
  private afterWrite (): void {
    if (this.unsyncedNow) { this.unsynced++; return } // its checkpoint waits for its WAL's sync (syncWal)
    if (this.walCheckpointPages === 0 || this.checkpointQueued || !this.walSynced()) return
    let bytes = 0
    try { bytes = fs.statSync(`${this.db.name}-wal`).size } catch { return }
    const frames = Math.floor(Math.max(0, bytes - 32) / (this.pageBytes + 24))
    if (frames < this.walCheckpointPages) return
    this.checkpointQueued = true
    setImmediate(() => {
      this.checkpointQueued = false
      // An unsynced transaction came meanwhile: its syncWal queues the checkpoint again.
      if (!this.db.open || this.db.inTransaction || !this.walSynced()) return
      const started = performance.now()
      try { this.db.pragma('wal_checkpoint(PASSIVE)') } catch { return }
      this.checkpoints.count++
      this.checkpoints.frames += frames
      this.checkpoints.ms += performance.now() - started
    })
  }

  /** Every transaction so far is durable: no unsynced one since the last syncWal that covers it. */
  private walSynced (): boolean { return this.unsyncedDurable === this.unsynced }

  private readonly pageBytes: number

  /** Set by deletes; after their transaction, free pages past catalogFreeBytesMax go back to the filesystem. */
  private deleted = false

  private reclaim (): void {
    this.deleted = false
    const free = this.db.pragma('freelist_count', { simple: true }) as number
    const pageSize = this.db.pragma('page_size', { simple: true }) as number
    if (free * pageSize > catalogFreeBytesMax) this.db.pragma('incremental_vacuum')
  }

  /**
   * Every volume's row without its root (issue #21: at 10,000 backups of a 1 TiB disk the roots are
   * 320 MiB of the catalog, and the open needs none of them): `root(id)` reads one.
   */
  volumes (): VolumeInfo[] {
    // A row without an owner (salvaged by repair from an older catalog) belongs to the pool's owner,
    // with the default mode of its kind.
    const owner = this.poolOwner()
    return (this.statements.volumes.all() as Array<Record<string, unknown>>).map(row => ({
      id: row.id as number,
      kind: row.kind as VolumeKind,
      name: row.name as string,
      size: row.size as number,
      createdMs: row.created_ms as number,
      mtimeMs: row.mtime_ms as number,
      sourceId: row.source_id as number | null,
      sourceLabel: row.source_label as string | null,
      epoch: row.epoch as number,
      allocatedBlocks: row.allocated_blocks as number,
      storedBytes: row.stored_bytes as number,
      activeExtent: row.active_extent as number | null,
      uid: (row.owner_uid as number | null) ?? owner.uid,
      gid: (row.owner_gid as number | null) ?? owner.gid,
      mode: (row.mode as number | null) ?? defaultModeOf(row.kind as VolumeKind),
      ...(typeof row.uuid === 'string' ? { uuid: row.uuid } : {}),
      protected: row.protected === 1,
      note: typeof row.note === 'string' ? row.note : null,
      sourceUuid: typeof row.source_uuid === 'string' ? row.source_uuid : null,
      groupName: typeof row.group_name === 'string' ? row.group_name : null
    }))
  }

  /**
   * Volume `id`'s stored root (u64 page ids and trailer, format/map-format.ts), or undefined when it
   * has no row: assembled from its list's pieces (each checked against its hash), or as stored when
   * it is dense (volumes.root of a row salvaged from a catalog before schema 5). Throws CORRUPT when
   * the list or a piece is damaged or missing.
   */
  root (id: number): Buffer | undefined {
    const state = this.rootState(id)
    if (state !== undefined && 'damaged' in state) throw new VdiskError('CORRUPT', state.damaged)
    return state?.root
  }

  /** root(), with damage as a value: `damaged` says what is wrong. */
  rootState (id: number): { root: Buffer } | { damaged: string } | undefined {
    this.rootsRead++
    const stored = this.statements.root.get(id) as Buffer | undefined
    if (stored === undefined || !isRootList(stored)) return stored === undefined ? undefined : { root: stored }
    try {
      return { root: assembleRoot(decodeRootList(stored, id), hash => this.statements.rootPiece.get(hash) as Buffer | undefined, this.checkedPieces) }
    } catch (err) {
      return { damaged: (err as Error).message }
    }
  }

  /** Root pieces read and checked lately (512: 1 MiB; a root of 1 TiB has 16). */
  private readonly checkedPieces = new CheckedPieces(512)

  /** Volume `id`'s root as stored (a list, or dense in an older row), or undefined: what catalog.log's snapshot copies. */
  storedRoot (id: number): Buffer | undefined { return this.statements.root.get(id) as Buffer | undefined }

  /** Whether a root piece is stored (catalog.log's append carries the ones that are not). */
  hasRootPiece (hash: Buffer): boolean { return this.statements.hasRootPiece.get(hash) !== undefined }

  /** A root piece's bytes by its hash, as stored (unchecked), or undefined. */
  rootPiece (hash: Buffer): Buffer | undefined { return this.statements.rootPiece.get(hash) as Buffer | undefined }

  /** Root pieces in hash order after `after` (a snapshot reads them a batch at a time). */
  rootPiecesAfter (after: Buffer, limit: number): Array<{ hash: Buffer, ids: Buffer }> {
    return this.statements.rootPiecesAfter.all(after, limit) as Array<{ hash: Buffer, ids: Buffer }>
  }

  /**
   * Writes volume `id`'s root (a stored root, dense) as a list: its pieces stored (or their rows
   * healed) and referenced once more each, then the list, then the old list's pieces referenced once
   * less, and deleted at none. Inside the caller's transaction: a crash leaves all of it or none.
   */
  private putRoot (id: number, stored: Buffer): void {
    const old = this.statements.storedRoot.get(id) as Buffer | undefined
    const split = splitRoot(stored, id)
    for (const piece of split.pieces) {
      this.statements.putRootPiece.run(piece.hash, piece.bytes)
      this.statements.refRootPiece.run(piece.hash)
    }
    this.statements.putRoot.run(id, split.list)
    if (old !== undefined) this.releaseList(old, id)
  }

  /**
   * A list no longer stored: its pieces referenced once less, deleted when no list names them. A list
   * that fails its check names nothing provable: its pieces keep their counts (too high, never too
   * low: a piece is deleted only when the catalog proves no list names it; repair recounts them).
   */
  private releaseList (stored: Buffer, id: number): void {
    if (!isRootList(stored)) return
    let hashes: Buffer[]
    try { hashes = listedPieces(decodeRootList(stored, id)) } catch { return }
    for (const hash of hashes) {
      const refs = this.statements.unrefRootPiece.get(hash) as number | undefined
      if (refs !== undefined && refs <= 0) {
        this.statements.deleteRootPiece.run(hash)
        this.statements.deleteRootPieceRefs.run(hash)
        this.deleted = true
      }
    }
  }

  /**
   * The root pieces checked (verify): each against its hash, every list's pieces present, and the
   * references stored equal to the lists' count. Problems, as sentences.
   */
  rootPieceProblems (): string[] {
    const problems: string[] = []
    const named = new Map<string, number>()
    const stored = new Map<string, boolean>()
    for (const row of this.db.prepare('SELECT hash, ids FROM root_pieces').iterate() as Iterable<{ hash: Buffer, ids: Buffer }>) {
      const ok = pieceHash(row.ids).equals(row.hash)
      stored.set(row.hash.toString('hex'), ok)
      if (!ok) problems.push(`root piece ${row.hash.subarray(0, 8).toString('hex')} fails its hash`)
    }
    for (const row of this.db.prepare('SELECT id, root FROM roots').iterate() as Iterable<{ id: number, root: Buffer }>) {
      if (!isRootList(row.root)) continue
      let hashes: Buffer[]
      try { hashes = listedPieces(decodeRootList(row.root, row.id)) } catch (err) {
        problems.push(`volume ${row.id}: its root list is damaged (${(err as Error).message})`)
        continue
      }
      for (const hash of hashes) {
        const key = hash.toString('hex')
        named.set(key, (named.get(key) ?? 0) + 1)
        if (!stored.has(key)) problems.push(`volume ${row.id}: its root names piece ${key.slice(0, 16)}, which is missing`)
      }
    }
    const refs = new Map<string, number>()
    for (const row of this.db.prepare('SELECT hash, refs FROM root_piece_refs').iterate() as Iterable<{ hash: Buffer, refs: number }>) refs.set(row.hash.toString('hex'), row.refs)
    for (const key of new Set([...stored.keys(), ...refs.keys(), ...named.keys()])) {
      const want = named.get(key) ?? 0
      const have = refs.get(key) ?? 0
      if (have !== want && stored.has(key)) problems.push(`root piece ${key.slice(0, 16)}: ${have} references stored, ${want} lists name it`)
      else if (have !== 0 && !stored.has(key)) problems.push(`root piece ${key.slice(0, 16)}: ${have} references stored to a piece that is missing`)
    }
    return problems
  }

  /**
   * Repair: every piece's references set to the number of lists naming it, and pieces no list names
   * deleted, unless a list fails its check (it may name them: then they are kept). Returns what changed.
   */
  recountRootPieces (): { recounted: number, deleted: number, held: boolean } {
    const named = new Map<string, { hash: Buffer, refs: number }>()
    let held = false
    for (const row of this.db.prepare('SELECT id, root FROM roots').all() as Array<{ id: number, root: Buffer }>) {
      if (!isRootList(row.root)) continue
      let hashes: Buffer[]
      try { hashes = listedPieces(decodeRootList(row.root, row.id)) } catch { held = true; continue }
      for (const hash of hashes) {
        const key = hash.toString('hex')
        const entry = named.get(key)
        if (entry === undefined) named.set(key, { hash, refs: 1 })
        else entry.refs++
      }
    }
    let recounted = 0
    let deleted = 0
    this.transaction(() => {
      const stored = new Map<string, number>()
      for (const row of this.db.prepare('SELECT hash, refs FROM root_piece_refs').all() as Array<{ hash: Buffer, refs: number }>) stored.set(row.hash.toString('hex'), row.refs)
      const put = this.db.prepare('INSERT OR REPLACE INTO root_piece_refs (hash, refs) VALUES (?, ?)')
      for (const [key, { hash, refs }] of named) {
        if (stored.get(key) === refs) continue
        put.run(hash, refs)
        recounted++
      }
      if (held) return
      for (const hash of this.db.prepare('SELECT hash FROM root_piece_refs UNION SELECT hash FROM root_pieces').pluck().all() as Buffer[]) {
        if (named.has(hash.toString('hex'))) continue
        this.statements.deleteRootPiece.run(hash)
        this.statements.deleteRootPieceRefs.run(hash)
        deleted++
        this.deleted = true
      }
    })
    return { recounted, deleted, held }
  }

  /** Roots read from the catalog so far (root(), volumesWithRoots()): tests check what an open reads. */
  rootsRead = 0

  /** Every volume's row with its root (repair, the catalog.log snapshot a slice at a time reads root() instead). */
  volumesWithRoots (): VolumeRow[] {
    // A damaged root reads as empty here (repair asks rootState for why).
    return this.volumes().map(row => { const state = this.rootState(row.id); return { ...row, root: state !== undefined && 'root' in state ? state.root : Buffer.alloc(0) } })
  }

  /**
   * Identities of volumes not inserted yet: given before the insert (catalog.log records a row before
   * the catalog does, and an import names its backup's identity), used by insertVolume.
   */
  private readonly pendingUuids = new Map<number, { uuid: string, importKey?: string }>()

  /** The stable identity of volume `id`: its row's, or the one it will be inserted with. */
  volumeUuid (id: number): string {
    const stored = this.statements.volumeUuid.get(id) as string | null | undefined
    if (typeof stored === 'string') return stored
    let pending = this.pendingUuids.get(id)
    if (pending === undefined) {
      pending = { uuid: crypto.randomUUID() }
      this.pendingUuids.set(id, pending)
    }
    return pending.uuid
  }

  /**
   * Names the identity volume `id` gets when it is inserted (an imported backup keeps its source's),
   * and the partial import whose rows go in the same transaction (the backup appears and its import's
   * progress disappears at once).
   */
  expectVolume (id: number, uuid: string, importKey?: string): void {
    this.pendingUuids.set(id, { uuid, importKey })
  }

  /** The volume with identity `uuid`, if any. */
  volumeByUuid (uuid: string): number | undefined { return this.statements.volumeByUuid.get(uuid) as number | undefined }

  /** The owner of the catalog file: the pool's owner. */
  private poolOwner (): { uid: number, gid: number } {
    try {
      const stat = fs.statSync(this.db.name)
      return { uid: stat.uid, gid: stat.gid }
    } catch {
      return { uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0 }
    }
  }

  insertVolume (row: VolumeRow): void {
    const pending = this.pendingUuids.get(row.id)
    this.statements.insertVolume.run({ ...schema4Fields(row), root: Buffer.alloc(0), sourceUuid: row.sourceUuid ?? null, groupName: row.groupName ?? null, uuid: row.uuid ?? pending?.uuid ?? crypto.randomUUID() })
    this.putRoot(row.id, row.root)
    // In the insert's transaction: rolled back with it. The pending entry stays until the process
    // ends (a commit that fails is retried with the same identity); ids are never reused meanwhile.
    if (pending?.importKey !== undefined) this.deleteImport(pending.importKey)
  }

  // ---- partial imports (src/volume/import.ts) ----

  imports (): ImportRow[] { return this.statements.imports.all() as ImportRow[] }
  putImport (row: ImportRow): void { this.statements.putImport.run(row) }
  touchImport (key: string, nowMs: number): void { this.statements.touchImport.run(nowMs, key) }
  /** Forgets a partial import and the chunks it held (they become garbage for gc). */
  deleteImport (key: string): void {
    this.statements.deleteImportBlocks.run(key)
    this.statements.deleteImport.run(key)
    this.deleted = true
  }

  /**
   * The blocks a partial import stored so far, block -> chunk id (null: a zero block): those from
   * `first` to `last`, at most `limit` of them (-1: no limit), in order.
   */
  importBlocks (key: string, first = 0, last = Number.MAX_SAFE_INTEGER, limit = -1): Map<number, number | null> {
    const out = new Map<number, number | null>()
    for (const row of this.statements.importBlocks.all(key, first, last, limit) as Array<{ block: number, chunkId: number | null }>) out.set(row.block, row.chunkId)
    return out
  }

  importBlockCount (key: string): number { return this.statements.importBlockCount.get(key) as number }

  /** Whether partial import `key` exists (it goes when its backup is made or it is dropped). */
  hasImport (key: string): boolean { return this.statements.hasImport.get(key) !== undefined }

  putImportBlocks (key: string, blocks: Array<{ block: number, chunkId: number | null }>): void {
    for (const b of blocks) this.statements.putImportBlock.run(key, b.block, b.chunkId)
  }

  /** Statements of multiRowMax rows each, by their head (runRows). */
  private readonly multiRow = new Map<string, Database.Statement>()

  /**
   * Runs `head VALUES (?, ...), (?, ...) ...` for the rows in `values` (`columns` values per row, one
   * after another), multiRowMax rows per statement: one step into SQLite per statement instead of one
   * per row (measured on a lazy pull's list of 15 000 chunks: 6 to 17 ms of CPU against 31 to 39; for the
   * chunks' and import_blocks' rows, with more columns and a unique index, it was slower, and they stay
   * one statement per row). The full-size statement is prepared once; the last, shorter one each time.
   */
  private runRows (head: string, columns: number, values: unknown[]): void {
    const rows = values.length / columns
    const statementOf = (n: number): Database.Statement => {
      const sql = `${head} VALUES ${new Array<string>(n).fill(`(${new Array<string>(columns).fill('?').join(', ')})`).join(', ')}`
      if (n !== multiRowMax) return this.db.prepare(sql)
      let statement = this.multiRow.get(head)
      if (statement === undefined) this.multiRow.set(head, statement = this.db.prepare(sql))
      return statement
    }
    for (let row = 0; row < rows; row += multiRowMax) {
      const n = Math.min(multiRowMax, rows - row)
      statementOf(n).run(...values.slice(row * columns, (row + n) * columns))
    }
  }

  /**
   * Forgets what partial import `key` recorded for blocks `first` to `last` (a resumed import drops the
   * blocks the stream it finishes with does not carry); their chunks become garbage for gc.
   */
  deleteImportBlocks (key: string, first: number, last: number): void {
    if (this.statements.deleteImportBlockRange.run(key, first, last).changes > 0) this.deleted = true
  }

  /** Chunks that partial imports hold: live for gc although no map names them yet. */
  heldChunkIds (): number[] { return this.statements.heldChunkIds.all() as number[] }
  updateVolume (row: VolumeRow, withRoot: boolean): void {
    if (withRoot) {
      const { root, createdMs: _c, sourceId: _s, uuid: _u, sourceUuid: _su, groupName: _g, ...rest } = schema4Fields(row)
      this.statements.updateVolume.run(rest)
      this.putRoot(row.id, root)
    } else {
      const { root: _root, createdMs: _c, sourceId: _s, uuid: _u, sourceUuid: _su, groupName: _g, ...rest } = schema4Fields(row)
      this.statements.updateVolumeNoRoot.run(rest)
    }
  }

  /**
   * Removes a volume's row and keeps its id as the high-water mark of volume ids: an id is an inode
   * number for the kernel (src/fuse/fuse3-ops.ts), which may still know it after a takeover, so no
   * later volume gets it, in this process or the next.
   */
  deleteVolume (id: number): void {
    this.statements.deleteVolume.run(id)
    const old = this.statements.storedRoot.get(id) as Buffer | undefined
    this.statements.deleteRoot.run(id)
    if (old !== undefined) this.releaseList(old, id)
    this.raiseIdHigh('volume_id_high', id)
    this.deleted = true
  }

  page (id: number): PageRow | undefined { return this.statements.page.get(id) as PageRow | undefined }
  putPage (id: number, epoch: number, entries: Buffer): void { this.statements.putPage.run(id, epoch, entries) }
  pageIds (): number[] { return this.statements.pageIds.all() as number[] }
  deletePage (id: number): void { this.statements.deletePage.run(id); this.deleted = true }
  maxPageId (): number { return this.statements.maxPageId.get() as number }
  maxVolumeId (): number { return this.statements.maxVolumeId.get() as number }
  maxExtentId (): number { return this.statements.maxExtentId.get() as number }

  extents (): ExtentRow[] { return this.statements.extents.all() as ExtentRow[] }
  insertExtent (row: ExtentRow): void { this.statements.insertExtent.run(row.id, row.volumeId, row.createdMs) }
  deleteExtent (id: number): void { this.statements.deleteExtent.run(id) }

  chunk (id: number): ChunkRow | undefined {
    const row = this.statements.chunk.get(id) as (Omit<ChunkRow, 'compressed'> & { compressed: number }) | undefined
    return row === undefined ? undefined : { ...row, compressed: row.compressed === 1 }
  }

  chunkByHash (hash: Buffer): number | undefined { return this.statements.chunkByHash.get(hash) as number | undefined }

  /** chunkByHash for many hashes at once: the ids of those indexed, by hash (hex). */
  chunksByHashes (hashes: Buffer[]): Map<string, number> {
    const out = new Map<string, number>()
    for (let at = 0; at < hashes.length; at += multiRowMax) {
      const part = hashes.slice(at, at + multiRowMax)
      let statement = part.length === multiRowMax ? this.multiRow.get('chunksByHashes') : undefined
      if (statement === undefined) {
        statement = this.db.prepare(`SELECT id, hash FROM chunks WHERE hash IN (${new Array<string>(part.length).fill('?').join(', ')})`)
        if (part.length === multiRowMax) this.multiRow.set('chunksByHashes', statement)
      }
      for (const row of statement.all(...part) as Array<{ id: number, hash: Buffer }>) out.set(row.hash.toString('hex'), row.id)
    }
    return out
  }

  /** Gives absent chunk `row.id` (pack id 0) the place `row` says; false when it was not absent. */
  fillChunk (row: ChunkRow): boolean {
    return this.statements.fillChunk.run(row.packId, row.offset, row.storedBytes, row.rawBytes, row.compressed ? 1 : 0, row.id).changes > 0
  }

  absentChunkCount (): number { return this.statements.absentChunkCount.get() as number }

  // ---- lazy pulls (src/volume/lazy.ts) ----

  lazyPulls (): LazyPullRow[] { return this.statements.lazyPulls.all() as LazyPullRow[] }
  putLazyPull (row: LazyPullRow): void { this.statements.putLazyPull.run(row) }
  deleteLazyPull (uuid: string): void { this.statements.deleteLazyChunksOf.run(uuid); this.statements.deleteLazyPull.run(uuid); this.deleted = true }
  putLazyChunk (uuid: string, chunkId: number): void { this.statements.putLazyChunk.run(uuid, chunkId) }
  /** putLazyChunk for many chunks (multi-row statements). */
  putLazyChunks (uuid: string, chunkIds: Iterable<number>): void {
    const values: unknown[] = []
    for (const id of chunkIds) values.push(uuid, id)
    this.runRows('INSERT OR IGNORE INTO lazy_chunks (uuid, chunk_id)', 2, values)
  }
  /** Per lazy pull, how many of its chunks are still listed (absent, or filled and not yet taken off the list). */
  lazyChunkCounts (): Map<string, number> {
    return new Map((this.statements.lazyChunkCounts.all() as Array<{ uuid: string, n: number }>).map(r => [r.uuid, r.n]))
  }
  /** How many chunks pull `uuid` lists (a range of the primary key: no other pull's rows are read). */
  lazyChunkCount (uuid: string): number { return this.statements.lazyChunkCount.get(uuid) as number }
  /** The lazy pulls that list chunk `id`. */
  lazyPullsOfChunk (id: number): string[] { return this.statements.lazyPullsOfChunk.all(id) as string[] }
  /** Takes chunk `id` off every lazy pull's list (it is here now, or gone). */
  deleteLazyChunk (id: number): void { this.statements.deleteLazyChunk.run(id) }
  /** Up to `limit` chunks pull `uuid` lists that are absent, with ids above `after`, in id order (catalog.log's snapshot). */
  lazyAbsentAfter (uuid: string, after: number, limit: number): AbsentChunk[] {
    return this.statements.lazyAbsentAfter.all(uuid, after, limit) as AbsentChunk[]
  }
  /** Listed chunks that are here (or gone) already: a daemon killed between a fill and its list's update. */
  presentLazyChunks (): number[] { return this.statements.presentLazyChunks.all() as number[] }

  insertChunk (row: ChunkRow): void {
    this.statements.insertChunk.run(row.id, row.hash, row.packId, row.offset, row.storedBytes, row.rawBytes, row.compressed ? 1 : 0)
    if (row.id > this.chunkIdHigh) this.raiseIdHigh('chunk_id_high', row.id)
  }
  /**
   * insertChunk for many rows, the high-water mark raised once to the largest id (a lazy pull's batch
   * of absent chunks: one meta row written per batch, not per chunk). Call inside a transaction.
   */
  insertChunks (rows: Iterable<ChunkRow>): void {
    let high = 0
    for (const row of rows) {
      this.statements.insertChunk.run(row.id, row.hash, row.packId, row.offset, row.storedBytes, row.rawBytes, row.compressed ? 1 : 0)
      if (row.id > high) high = row.id
    }
    if (high > this.chunkIdHigh) this.raiseIdHigh('chunk_id_high', high)
  }

  /**
   * The high-water marks of chunk and pack ids: every id ever indexed (or found in a pack by repair)
   * is at or below them, even after its row is gone, so no id is handed out twice and a pack record
   * above the mark is known never to have been indexed (a seal that did not finish).
   */
  private chunkIdHigh = -1
  raiseIdHigh (key: 'chunk_id_high' | 'pack_id_high' | 'volume_id_high', id: number): void {
    if (key === 'chunk_id_high') {
      if (this.chunkIdHigh < 0) this.chunkIdHigh = Number(this.getMeta(key) ?? '0')
      if (id <= this.chunkIdHigh) return
      this.chunkIdHigh = id
      this.setMeta(key, String(id))
    } else if (Number(this.getMeta(key) ?? '0') < id) this.setMeta(key, String(id))
  }

  /**
   * Gc proved these chunks unreferenced: their rows go, and their ids are kept as retired until their
   * pack is deleted, so compaction can tell a freed record from one the catalog lost.
   */
  retireChunks (ids: number[]): void {
    this.transaction(() => {
      for (const id of ids) { this.statements.retireChunk.run(id); this.statements.deleteChunk.run(id) }
    })
  }

  /** Chunks a seal pass stored but never indexed (it failed): garbage in their packs, like retired ones. */
  retireUnindexed (rows: Array<{ id: number, packId: number }>): void {
    this.transaction(() => { for (const row of rows) this.statements.retireUnindexed.run(row.id, row.packId) })
  }

  isRetired (id: number): boolean { return this.statements.isRetired.get(id) !== undefined }
  /** After pack `packId` was deleted: its retired ids name nothing any more. */
  clearRetired (packId: number): void { this.statements.clearRetired.run(packId) }

  moveChunk (id: number, packId: number, offset: number): void { this.statements.moveChunk.run(packId, offset, id) }
  deleteChunk (id: number): void { this.statements.deleteChunk.run(id); this.deleted = true }
  chunkIds (): number[] { return this.statements.chunkIds.all() as number[] }
  /** The chunks whose ids lie in [low, high] (one range scan of the primary key). */
  chunksBetween (low: number, high: number): ChunkRow[] {
    return (this.statements.chunksBetween.all(low, high) as Array<Omit<ChunkRow, 'compressed'> & { compressed: number }>).map(row => ({ ...row, compressed: row.compressed === 1 }))
  }

  /** Chunk ids above `id` (made since a gc saw `id` as the highest). */
  chunkIdsAbove (id: number): number[] { return this.statements.chunkIdsAbove.all(id) as number[] }
  hasChunk (id: number): boolean { return this.statements.hasChunk.get(id) !== undefined }
  chunksInPack (packId: number): ChunkRow[] {
    return (this.statements.chunksInPack.all(packId) as Array<Omit<ChunkRow, 'compressed'> & { compressed: number }>).map(row => ({ ...row, compressed: row.compressed === 1 }))
  }

  packUsage (): Array<{ id: number, liveBytes: number, chunks: number }> {
    return this.statements.packUsage.all() as Array<{ id: number, liveBytes: number, chunks: number }>
  }

  /** packUsage() of the packs `ids` only (those that exist). */
  packUsageOf (ids: Iterable<number>): Array<{ id: number, liveBytes: number, chunks: number }> {
    const out: Array<{ id: number, liveBytes: number, chunks: number }> = []
    for (const id of ids) {
      const row = this.statements.packUsageOf.get(id) as { id: number, liveBytes: number, chunks: number } | undefined
      if (row !== undefined) out.push(row)
    }
    return out
  }

  /** Pack ids above `id` (made since a gc saw `id` as the highest). */
  packIdsAbove (id: number): number[] { return this.statements.packIdsAbove.all(id) as number[] }

  maxChunkId (): number { return this.statements.maxChunkId.get() as number }
  maxPackId (): number { return this.statements.maxPackId.get() as number }
  insertPack (id: number, createdMs: number): void { this.statements.insertPack.run(id, createdMs) }
  deletePack (id: number): void { this.statements.deletePack.run(id) }

  /** Copies rows salvaged from a damaged catalog into `table`, keeping only the columns it has. */
  importRows (table: string, rows: Array<Record<string, unknown>>): number {
    const columns = new Set((this.db.prepare(`PRAGMA table_info(${JSON.stringify(table)})`).all() as Array<{ name: string }>).map(c => c.name))
    if (columns.size === 0) return 0
    let copied = 0
    this.transaction(() => {
      for (const row of rows) {
        const keys = Object.keys(row).filter(k => columns.has(k))
        if (keys.length === 0) continue
        const sql = `INSERT OR REPLACE INTO ${table} (${keys.join(', ')}) VALUES (${keys.map(() => '?').join(', ')})`
        try { this.db.prepare(sql).run(...keys.map(k => row[k])); copied++ } catch {}
      }
    })
    return copied
  }

  /** SQLite's own consistency check: 'ok' or the problems it found. */
  integrityCheck (): string[] {
    return (this.db.prepare('PRAGMA integrity_check').pluck().all() as string[]).filter(line => line !== 'ok')
  }

  /**
   * gc's reference counts as a clean close stored them (volume/ref-counts.ts), or undefined: the row is
   * taken by the open that reads it (deleteRefCounts in its first transaction), so it is there only
   * between a clean close and the next open.
   */
  refCounts (): { fingerprint: string, sum: string, data: Buffer } | undefined {
    return this.db.prepare('SELECT fingerprint, sum, data FROM ref_counts WHERE id = 1').get() as { fingerprint: string, sum: string, data: Buffer } | undefined
  }

  putRefCounts (fingerprint: string, sum: string, data: Buffer): void {
    this.db.prepare('INSERT OR REPLACE INTO ref_counts (id, fingerprint, sum, data) VALUES (1, ?, ?, ?)').run(fingerprint, sum, data)
  }

  deleteRefCounts (): void { this.db.prepare('DELETE FROM ref_counts').run() }

  /**
   * What the stored reference counts must find unchanged at the next open: every commit writes
   * journal_seq; the rest catches a catalog changed by other means (repair, another vdiskfs).
   */
  countsFingerprint (): string {
    const of = (sql: string): unknown => this.db.prepare(sql).raw().get()
    return JSON.stringify({
      journalSeq: this.getMeta('journal_seq') ?? null,
      nextEpoch: this.getMeta('next_epoch') ?? null,
      pages: of('SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(epoch), 0) FROM pages'),
      volumes: of('SELECT COUNT(*), COALESCE(MAX(id), 0), COALESCE(SUM(epoch), 0) FROM volumes'),
      chunks: of('SELECT COUNT(*), COALESCE(MAX(id), 0) FROM chunks'),
      extents: of('SELECT COUNT(*), COALESCE(MAX(id), 0) FROM extents')
    })
  }

  getMeta (key: string): string | undefined { return this.statements.getMeta.get(key) as string | undefined }
  setMeta (key: string, value: string): void { this.statements.setMeta.run(key, value) }
}

/**
 * A row's schema 4 fields as SQLite stores them: protected as 0/1 and a missing note as null (rows of
 * an older catalog.log, replayed by repair, have neither).
 */
function schema4Fields (row: VolumeRow): Omit<VolumeRow, 'protected'> & { protected: number, note: string | null } {
  return { ...row, protected: row.protected === true ? 1 : 0, note: row.note ?? null }
}

/** The mode of a new volume: private to its owner; backups never writable (the volume layer's rule). */
export function defaultModeOf (kind: VolumeKind): number {
  return kind === 'backup' ? 0o400 : 0o600
}

/**
 * Schema 1 -> 2: volumes get an owner, a group and a mode. Existing volumes go to the pool's owner
 * (the catalog file's), with the default mode of their kind: 0600, backups 0400. One transaction.
 */
function migrateFrom1 (db: Database.Database, file: string): void {
  const stat = fs.statSync(file)
  db.transaction(() => {
    // A catalog rebuilt by repair may say 1 while it already has the columns (salvaged meta rows).
    const columns = new Set((db.prepare('PRAGMA table_info(volumes)').all() as Array<{ name: string }>).map(c => c.name))
    for (const column of ['owner_uid', 'owner_gid', 'mode']) {
      if (!columns.has(column)) db.exec(`ALTER TABLE volumes ADD COLUMN ${column} INTEGER`)
    }
    db.prepare("UPDATE volumes SET owner_uid = ?, owner_gid = ?, mode = CASE kind WHEN 'backup' THEN ? ELSE ? END WHERE owner_uid IS NULL")
      .run(stat.uid, stat.gid, defaultModeOf('backup'), defaultModeOf('disk'))
    db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('2', 'schema_version')
  })()
}

/** Schema 2 -> 3: every volume gets a stable identity (a random UUID); one transaction. */
function migrateFrom2 (db: Database.Database): void {
  db.transaction(() => {
    const columns = new Set((db.prepare('PRAGMA table_info(volumes)').all() as Array<{ name: string }>).map(c => c.name))
    if (!columns.has('uuid')) db.exec('ALTER TABLE volumes ADD COLUMN uuid TEXT')
    const give = db.prepare('UPDATE volumes SET uuid = ? WHERE id = ?')
    for (const id of db.prepare('SELECT id FROM volumes WHERE uuid IS NULL').pluck().all() as number[]) give.run(crypto.randomUUID(), id)
    db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('3', 'schema_version')
  })()
}

/**
 * Schema 3 -> 4: volumes get protected (0: none is), note (null), group_name (null) and source_uuid: the identity of the
 * volume each was made from while that volume is still here (null otherwise: an imported backup, or one
 * whose source was removed, keeps grouping by its source's label). One transaction.
 */
function migrateFrom3 (db: Database.Database): void {
  db.transaction(() => {
    const columns = new Set((db.prepare('PRAGMA table_info(volumes)').all() as Array<{ name: string }>).map(c => c.name))
    if (!columns.has('protected')) db.exec('ALTER TABLE volumes ADD COLUMN protected INTEGER')
    if (!columns.has('note')) db.exec('ALTER TABLE volumes ADD COLUMN note TEXT')
    if (!columns.has('source_uuid')) db.exec('ALTER TABLE volumes ADD COLUMN source_uuid TEXT')
    if (!columns.has('group_name')) db.exec('ALTER TABLE volumes ADD COLUMN group_name TEXT')
    db.exec('UPDATE volumes SET protected = 0 WHERE protected IS NULL')
    db.exec('UPDATE volumes SET source_uuid = (SELECT s.uuid FROM volumes s WHERE s.id = volumes.source_id) WHERE source_uuid IS NULL AND source_id IS NOT NULL')
    db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('4', 'schema_version')
  })()
}

/**
 * Schema 4 -> 5: the volumes' roots move to the roots table (issue #21: a row's counters were
 * rewritten with its root, 32 KiB at 1 TiB, in every volume reading a page a seal pass repointed).
 * One transaction.
 */
function migrateFrom4 (db: Database.Database): void {
  db.transaction(() => {
    db.exec('INSERT OR IGNORE INTO roots (id, root) SELECT id, root FROM volumes')
    db.exec("UPDATE volumes SET root = X'' WHERE length(root) > 0")
    db.prepare('UPDATE meta SET value = ? WHERE key = ?').run('5', 'schema_version')
  })()
}

/** What the upgrade to schema 6 did: roots made lists, the pieces they share, the bytes before and after, its time. */
export interface RootsMigration { roots: number, pieces: number, bytesBefore: number, bytesAfter: number, ms: number }

/**
 * Schema 5 -> 6: every dense root in the roots table becomes a list of shared pieces (root-pieces.ts),
 * so the backups made before the upgrade share their pieces too. One transaction, a root at a time
 * (the ids first: better-sqlite3 runs no statement while another iterates).
 */
function migrateFrom5 (db: Database.Database): RootsMigration {
  const started = performance.now()
  const out: RootsMigration = { roots: 0, pieces: 0, bytesBefore: 0, bytesAfter: 0, ms: 0 }
  db.transaction(() => {
    const read = db.prepare('SELECT root FROM roots WHERE id = ?').pluck()
    const put = db.prepare('UPDATE roots SET root = ? WHERE id = ?')
    const putPiece = db.prepare('INSERT INTO root_pieces (hash, ids) VALUES (?, ?) ON CONFLICT (hash) DO NOTHING')
    const ref = db.prepare('INSERT INTO root_piece_refs (hash, refs) VALUES (?, 1) ON CONFLICT (hash) DO UPDATE SET refs = refs + 1')
    for (const id of db.prepare('SELECT id FROM roots ORDER BY id').pluck().all() as number[]) {
      const stored = read.get(id) as Buffer
      if (isRootList(stored)) continue
      const split = splitRoot(stored, id)
      for (const piece of split.pieces) {
        out.pieces += putPiece.run(piece.hash, piece.bytes).changes
        ref.run(piece.hash)
      }
      put.run(split.list, id)
      out.roots++
      out.bytesBefore += stored.length
      out.bytesAfter += split.list.length
    }
    out.bytesAfter += (db.prepare('SELECT COALESCE(SUM(length(ids)), 0) FROM root_pieces').pluck().get() as number)
    db.prepare('UPDATE meta SET value = ? WHERE key = ?').run(String(catalogSchemaVersion), 'schema_version')
  })()
  out.ms = performance.now() - started
  return out
}

/** Drops the partial imports nobody continued for importAbandonedMs: their chunks become garbage for gc. */
function dropAbandonedImports (db: Database.Database, nowMs: number): void {
  db.transaction(() => {
    const keys = db.prepare('SELECT key FROM imports WHERE updated_ms < ?').pluck().all(nowMs - importAbandonedMs) as string[]
    for (const key of keys) {
      db.prepare('DELETE FROM import_blocks WHERE key = ?').run(key)
      db.prepare('DELETE FROM imports WHERE key = ?').run(key)
    }
    // Blocks of an import that is gone (a second import of the same stream, still storing when the
    // first one finished) would hold their chunks for ever.
    db.prepare('DELETE FROM import_blocks WHERE key NOT IN (SELECT key FROM imports)').run()
  })()
}
