/**
 * A volume's stored map root, paged and shared (issue #21): the catalog keeps a root (the bytes
 * format/map-format.ts encodeRoot makes: u64 page ids and the 8-byte "VDRT" trailer) as a short list
 * of pieces, each piece `rootPieceBytes` of the ids, stored once by its SHA-256 in `root_pieces` and
 * shared by every root that holds the same bytes (a backup and its disk share all of them until the
 * disk changes a page). docs/FORMAT.md, "Map root", describes the list byte by byte.
 *
 * The list holds the trailer's bytes itself (they change with every id), so a piece changes only when
 * an id in it does. Splitting is lossless for any stored root (a legacy one without a trailer, an empty
 * one, a damaged one): assembling gives back exactly the bytes that were split, and decodeRoot then
 * checks them as before. A piece of zeros (pages no volume has yet, common in a sparse disk) has the
 * hash of 32 zero bytes and no row.
 *
 * Errors: decodeRootList and assembleRoot throw RangeError naming the damage.
 */
import crypto from 'node:crypto'
import zlib from 'node:zlib'

export const rootListMagic = 0x4c524456 // "VDRL"
export const rootListVersion = 1
/** 256 page ids a piece (the last one of a root may be shorter). */
export const rootPieceBytes = 2048
export const rootPieceHashBytes = 32
export const rootListHeaderBytes = 16
const rootListCrcBytes = 4
/** The stored root's last bytes (its trailer) kept in the list, not in a piece. */
const rootTailMax = 8

const zeroHash = Buffer.alloc(rootPieceHashBytes)
const zeroPiece = Buffer.alloc(rootPieceBytes)

export interface RootPiece { hash: Buffer, bytes: Buffer }

/** A root as the catalog stores it: its list, and its pieces other than zeros, in order (a repeated piece repeats). */
export interface SplitRoot { list: Buffer, pieces: RootPiece[] }

export interface RootList {
  /** Bytes of the stored root the list stands for. */
  storedBytes: number
  pieceBytes: number
  /** One per piece; all zeros: a piece of zeros. */
  hashes: Buffer[]
  tail: Buffer
}

export function pieceHash (bytes: Uint8Array): Buffer {
  return crypto.createHash('sha256').update(bytes).digest()
}

export function isZeroHash (hash: Uint8Array): boolean { return zeroHash.equals(hash) }

/** Whether a stored blob is a list (else a dense root, as catalogs before schema 6 stored them). */
export function isRootList (blob: Uint8Array): boolean {
  return blob.byteLength >= rootListHeaderBytes && Buffer.from(blob.buffer, blob.byteOffset, 4).readUInt32LE(0) === rootListMagic
}

/** The split of the last root split, by its buffer: a commit's root is split for catalog.log and then for the catalog. */
const lastSplits = new WeakMap<Buffer, { volumeId: number, split: SplitRoot }>()

/** `stored` (a root as encodeRoot makes it) as a list and pieces, the list bound to `volumeId` by its CRC. */
export function splitRoot (stored: Buffer, volumeId: number): SplitRoot {
  const cached = lastSplits.get(stored)
  if (cached !== undefined && cached.volumeId === volumeId) return cached.split
  const tail = Math.min(rootTailMax, stored.length)
  const idsBytes = stored.length - tail
  const count = Math.ceil(idsBytes / rootPieceBytes)
  const list = Buffer.alloc(rootListHeaderBytes + count * rootPieceHashBytes + tail + rootListCrcBytes)
  list.writeUInt32LE(rootListMagic, 0)
  list.writeUInt16LE(rootListVersion, 4)
  list.writeUInt16LE(tail, 6)
  list.writeUInt32LE(stored.length, 8)
  list.writeUInt32LE(rootPieceBytes, 12)
  const pieces: RootPiece[] = []
  for (let i = 0; i < count; i++) {
    const bytes = stored.subarray(i * rootPieceBytes, Math.min(idsBytes, (i + 1) * rootPieceBytes))
    if (bytes.equals(zeroPiece.subarray(0, bytes.length))) continue
    const hash = pieceHash(bytes)
    hash.copy(list, rootListHeaderBytes + i * rootPieceHashBytes)
    pieces.push({ hash, bytes: Buffer.from(bytes) })
  }
  const end = rootListHeaderBytes + count * rootPieceHashBytes
  stored.copy(list, end, idsBytes)
  list.writeUInt32LE(listCrc(list.subarray(0, end + tail), volumeId), end + tail)
  const split = { list, pieces }
  lastSplits.set(stored, { volumeId, split })
  return split
}

function listCrc (bytes: Uint8Array, volumeId: number): number {
  const seed = Buffer.alloc(8)
  seed.writeBigUInt64LE(BigInt(volumeId))
  return zlib.crc32(bytes, zlib.crc32(seed))
}

/** A stored list read and checked (its magic, version, length and CRC bound to `volumeId`). */
export function decodeRootList (list: Buffer, volumeId: number): RootList {
  if (!isRootList(list)) throw new RangeError('the root list has no magic')
  const version = list.readUInt16LE(4)
  if (version !== rootListVersion) throw new RangeError(`the root list has version ${version}, expected ${rootListVersion}`)
  const tail = list.readUInt16LE(6)
  const storedBytes = list.readUInt32LE(8)
  const pieceBytes = list.readUInt32LE(12)
  if (tail > rootTailMax || tail > storedBytes || pieceBytes === 0) throw new RangeError('the root list fails its checksum')
  const count = Math.ceil((storedBytes - tail) / pieceBytes)
  const end = rootListHeaderBytes + count * rootPieceHashBytes
  if (list.length !== end + tail + rootListCrcBytes) throw new RangeError(`the root list has ${list.length} bytes, expected ${end + tail + rootListCrcBytes}`)
  if (list.readUInt32LE(end + tail) !== listCrc(list.subarray(0, end + tail), volumeId)) throw new RangeError('the root list fails its checksum')
  const hashes: Buffer[] = []
  for (let i = 0; i < count; i++) hashes.push(Buffer.from(list.subarray(rootListHeaderBytes + i * rootPieceHashBytes, rootListHeaderBytes + (i + 1) * rootPieceHashBytes)))
  return { storedBytes, pieceBytes, hashes, tail: Buffer.from(list.subarray(end, end + tail)) }
}

/**
 * The stored root a list stands for, its pieces found by `piece` (by hash) and each checked against
 * its hash: a missing piece or one that fails is damage (RangeError), never zeros.
 */
export function assembleRoot (list: RootList, piece: (hash: Buffer) => Buffer | undefined, checked?: CheckedPieces): Buffer {
  const out = Buffer.alloc(list.storedBytes)
  const idsBytes = list.storedBytes - list.tail.length
  const count = list.hashes.length
  for (let i = 0; i < count; i++) {
    const hash = list.hashes[i]
    if (isZeroHash(hash)) continue
    const length = Math.min(list.pieceBytes, idsBytes - i * list.pieceBytes)
    const key = checked === undefined ? '' : hash.toString('hex')
    const known = checked?.get(key)
    if (known !== undefined && known.length === length) { known.copy(out, i * list.pieceBytes); continue }
    const bytes = piece(hash)
    const name = `piece ${i} of ${count} (${hash.subarray(0, 8).toString('hex')})`
    if (bytes === undefined) throw new RangeError(`${name} is missing`)
    if (bytes.length !== length || !pieceHash(bytes).equals(hash)) throw new RangeError(`${name} fails its hash`)
    bytes.copy(out, i * list.pieceBytes)
    checked?.set(key, Buffer.from(bytes))
  }
  list.tail.copy(out, idsBytes)
  return out
}

/**
 * Pieces read and found equal to their hash lately, by hash (hex), the least recently used dropped past
 * `max`: the roots of consecutive backups share most of their pieces, so a walk reading every root
 * (du, gc's mark, verify) reads and hashes the few that changed. A piece's bytes never change under its
 * hash, so a copy stays right whatever the catalog does meanwhile.
 */
export class CheckedPieces {
  private readonly pieces = new Map<string, Buffer>()
  constructor (private readonly max: number) {}

  get (key: string): Buffer | undefined {
    const bytes = this.pieces.get(key)
    if (bytes !== undefined) { this.pieces.delete(key); this.pieces.set(key, bytes) }
    return bytes
  }

  set (key: string, bytes: Buffer): void {
    this.pieces.set(key, bytes)
    if (this.pieces.size > this.max) this.pieces.delete(this.pieces.keys().next().value as string)
  }
}

/** The hashes of a list's pieces other than zeros (repeats kept: each counts as a reference). */
export function listedPieces (list: RootList): Buffer[] {
  return list.hashes.filter(hash => !isZeroHash(hash))
}
