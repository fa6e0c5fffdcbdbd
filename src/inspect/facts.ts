/**
 * What an image is, in one record (issue #10, #11): the facts `vdiskfs info` prints and the opt-in
 * user.vdiskfs.* xattrs serve, so that the two cannot drift apart. Reads only public state of the pool,
 * its volumes and the space accounting.
 */
import { VolumeKind } from '../catalog/catalog'
import { Pool } from '../volume/pool'
import { VolumeSpace } from './space'
import { Volume } from '../volume/volume'
import { dirOfKind } from '../volume/names'


export interface VolumeFacts {
  kind: VolumeKind
  name: string
  /** Logical size in bytes. */
  size: number
  /** Where it came from: `backups/NAME.img` (a clone), `disks/NAME.img` (a backup), `LABEL (deleted)`, or null. */
  source: string | null
  createdMs: number
  mtimeMs: number
  /** Stored bytes of every block it can read (shared ones included). */
  referencedBytes: number
  /** What deleting it would free now. */
  uniqueBytes: number
  /** What `du`/`ls -s` show for the image (st_blocks): the same count as referencedBytes. */
  storedBytes: number
  /** Of referencedBytes, those still in delta extents, waiting to be sealed into the chunk store. */
  unsealedBytes: number
  /** Backups only: bytes it keeps that its source no longer references. */
  keptFromSourceBytes: number | null
  uid: number
  gid: number
  /** Permission bits, e.g. 0o600. */
  mode: number
  /** Handles open on it through the mount (files, loop devices). */
  openHandles: number
  /** Backups: prune keeps it and rm refuses it until unprotected (vdiskfs protect). */
  protected: boolean
  /** The admin's note (vdiskfs note), or null. */
  note: string | null
  /** Backups: the consistency group it was taken in (vdiskfs backup --group), or null. */
  group: string | null
}

/** Where a volume came from, as a path inside the mount, or null for a disk made from nothing. */
export function sourceOf (pool: Pool, volume: Volume): string | null {
  if (volume.sourceId === null) return null
  const source = pool.liveSource(volume)
  return source === undefined ? `${volume.sourceLabel ?? ''} (deleted)` : `${dirOfKind[source.kind]}/${source.name}`
}

/** The facts of one volume, with its space figures from the space accounting (SpaceAccounting.volume). */
export function volumeFacts (pool: Pool, space: VolumeSpace, volume: Volume): VolumeFacts {
  const { usage, unsealedBytes } = space
  return {
    kind: volume.kind,
    name: volume.name,
    size: volume.size,
    source: sourceOf(pool, volume),
    createdMs: volume.createdMs,
    mtimeMs: volume.mtimeMs,
    referencedBytes: usage.referencedBytes,
    uniqueBytes: usage.uniqueBytes,
    storedBytes: volume.storedBytes,
    unsealedBytes,
    keptFromSourceBytes: usage.keptFromSourceBytes,
    uid: volume.uid,
    gid: volume.gid,
    mode: volume.mode,
    openHandles: volume.openHandles,
    protected: volume.isProtected,
    note: volume.note,
    group: volume.groupName
  }
}
