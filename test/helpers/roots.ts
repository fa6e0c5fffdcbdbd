/**
 * A volume's map root as the catalog stores it, read from catalog.sqlite directly (tests that damage
 * the catalog on a closed pool): its list's pieces assembled into the stored root (page ids and trailer),
 * or the row as it is when dense; and where the bytes of its first page id live, to damage them.
 */
import Database from 'better-sqlite3'
import { assembleRoot, decodeRootList, isRootList, listedPieces } from '../../src/catalog/root-pieces'

const rowOf = (db: Database.Database, kind: string, name: string): { id: number, root: Buffer } =>
  db.prepare('SELECT v.id AS id, r.root AS root FROM volumes v JOIN roots r ON r.id = v.id WHERE v.kind = ? AND v.name = ?').get(kind, name) as { id: number, root: Buffer }

/** The stored root (u64 page ids, then the trailer) of volume `kind/name`. */
export function storedRootOf (db: Database.Database, kind: string, name: string): Buffer {
  const { id, root } = rowOf(db, kind, name)
  if (!isRootList(root)) return root
  const piece = db.prepare('SELECT ids FROM root_pieces WHERE hash = ?').pluck()
  return assembleRoot(decodeRootList(root, id), hash => piece.get(hash) as Buffer | undefined)
}

/** The hash of the piece holding the first page ids of volume `kind/name` (its first piece that is not zeros). */
export function firstPieceOf (db: Database.Database, kind: string, name: string): Buffer {
  const { id, root } = rowOf(db, kind, name)
  return listedPieces(decodeRootList(root, id))[0]
}
