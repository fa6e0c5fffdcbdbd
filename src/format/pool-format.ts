/**
 * The pool directory's layout and the pool header file. Read by the pool opener, written by pool
 * creation; both import these names. docs/FORMAT.md describes the same in prose.
 */

/** The header: a small JSON file that makes a directory a pool. */
export const poolHeaderFile = 'vdiskfs-pool.json'
export const poolMagic = 'vdiskfs-pool'
/** Format version this code writes and the newest it reads. */
export const poolFormatVersion = 1

/** SQLite catalog (WAL mode; the -wal file lives beside it). */
export const catalogFile = 'catalog.sqlite'
/** A second, checksummed copy of the catalog's volumes and map pages (catalog/catalog-log.ts). */
export const catalogLogFile = 'catalog.log'
/** Delta extents live here, one file per extent: `<extent id>.dx`. */
export const extentsDir = 'extents'
/** Chunk pack files live here: `<pack id>.pack`. */
export const packsDir = 'packs'
/**
 * Files set aside instead of deleted: `<ms>-<name>`, mode 0600, never read by the daemon. Repair
 * moves strays here; compaction moves packs holding chunk records the catalog does not account for;
 * repair reads the packs here to bring back chunks the maps need.
 */
export const quarantineDir = 'quarantine'
/** A lazy pull's references applied after its reply (volume/lazy-refs.ts): UUID.refs while they are applied, and PULL.CLONE.clone for each clone pending with it. */
export const lazyDir = 'lazy'
/** Daemon log and pid, for people. */
export const daemonLogFile = 'daemon.log'
export const daemonPidFile = 'daemon.pid'
/**
 * The FUSE 3 transport's open file handles while a holder keeps the mount (fuse/fuse3-ops.ts): JSON
 * [[fh, volumeId, writable], ...], rewritten at each open and release, so that a daemon taking the
 * mount over knows the handles the kernel still uses.
 */
export const fuseHandlesFile = 'fuse-handles.json'

export interface PoolHeader {
  magic: typeof poolMagic
  formatVersion: number
  blockBytes: number
  /** zstd level for sealing (1-19); pools made before it existed use 3. */
  zstdLevel?: number
  createdMs: number
  poolId: string
}

// ---- file names: each formatter beside its parser (repair and verify recognise pool files here) ----

export function extentFileName (extentId: number): string {
  return `${extentId}.dx`
}
/** The extent id a name in extents/ stands for; null when it is not an extent file's name. */
export function extentIdOfFile (name: string): number | null {
  const match = /^(\d+)\.dx$/.exec(name)
  return match === null ? null : Number(match[1])
}

export function packFileName (packId: number): string {
  return `${packId}.pack`
}
/** The pack id a name in packs/ stands for; null when it is not a pack file's name. */
export function packIdOfFile (name: string): number | null {
  const match = /^(\d+)\.pack$/.exec(name)
  return match === null ? null : Number(match[1])
}

/** The change journal's files (volume/journal.ts), in the pool directory. */
export function journalFileName (seq: number): string { return `journal.${seq}` }
/** The sequence number a journal file's name stands for; null when it is not one. */
export function journalSeqOfFile (name: string): number | null {
  const match = /^journal\.(\d+)$/.exec(name)
  return match === null ? null : Number(match[1])
}

/** Where a damaged catalog is moved aside by repair: `catalog.sqlite.damaged-<ms>`. */
export function damagedCatalogFileName (nowMs: number): string { return `${catalogFile}.damaged-${nowMs}` }

/** A file moved to quarantine/ at `nowMs`: `<ms>-<name>`. */
export function quarantineFileName (nowMs: number, name: string): string { return `${nowMs}-${name}` }
/** Whether a name in quarantine/ is a pack (`<ms>-<id>.pack`) or an extent (`<ms>-<id>.dx`) set aside. */
export function quarantinedKind (name: string): 'pack' | 'extent' | null {
  return name.endsWith('.pack') ? 'pack' : name.endsWith('.dx') ? 'extent' : null
}

/**
 * Whether a name at the top of the pool directory is one the pool writes: the header, the catalog (and
 * its SQLite files, a damaged one set aside), the log, the folders, the daemon's files, the change
 * journal, and a `.tmp` file of an atomic rewrite in progress.
 */
export function isPoolFile (name: string): boolean {
  const known = [poolHeaderFile, catalogFile, `${catalogFile}-wal`, `${catalogFile}-shm`, catalogLogFile, extentsDir, packsDir, quarantineDir, lazyDir, daemonLogFile, daemonPidFile, fuseHandlesFile]
  return known.includes(name) || name.startsWith(`${catalogFile}.damaged-`) || name.endsWith('.tmp') || journalSeqOfFile(name) !== null
}
