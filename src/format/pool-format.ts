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

export function extentFileName (extentId: number): string {
  return `${extentId}.dx`
}
