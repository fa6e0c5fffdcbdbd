/**
 * The layout of a vdiskfs dedup store on S3 (docs/REMOTE.md describes it for people), imported by every
 * reader and writer of the store: object keys, the chunk object's header, the manifest's fields, and the
 * limits of the remote code. One store lives under s3://BUCKET/PREFIX/:
 *
 *   PREFIX/vdiskfs-store.json        the store's marker: format, version, grace period (written once)
 *   PREFIX/chunks/AB/ABCD...         one chunk: a block's bytes, zstd-compressed, named by the BLAKE3-256 of
 *                                    the uncompressed block (64 hex digits; AB = its first two)
 *   PREFIX/packs/P                   a pack: many chunk objects one after the other (P: 32 random hex digits)
 *   PREFIX/indexes/P                 the pack's index: where each of its chunks lies in it (written after the pack)
 *   PREFIX/manifests/ID.json         one backup: its block list (index -> chunk id) and what it was; ID is the
 *                                    first 32 hex digits of the BLAKE3-256 of the manifest's bytes
 *
 * Every object is written once (PUT with If-None-Match: *); a pack's index is written once the pack is
 * whole, and a manifest last, so a backup is visible only once every chunk it names is stored. Stores
 * written before packs hold one object per chunk under chunks/: still read, never written any more.
 */
import { blake3UrlSafeBase64 } from '@napi-rs/blake-hash'
import { VdiskError, corrupt } from '../errors'
import { constants as bufferConstants } from 'node:buffer'
import { blockBytesMax, blockBytesMin, volumeBytesMax } from '../limits'
import { sealCipherName, sealOverheadBytes } from './crypt'

export const storeMarkerKey = 'vdiskfs-store.json'
export const storeFormat = 'vdiskfs-remote-store'
export const storeVersion = 1
/** The marker of an encrypted store (crypt.ts): version 2, with an `encryption` field. Version 1 stores stay plain. */
export const storeVersionEncrypted = 2
export const chunksPrefix = 'chunks/'
export const manifestsPrefix = 'manifests/'
export const packsPrefix = 'packs/'
export const indexesPrefix = 'indexes/'
export const packIndexFormat = 'vdiskfs-remote-pack-index'
export const packIndexVersion = 1
/** Pack ids: random, 32 hex digits. */
export const packIdHexLength = 32
export const manifestSuffix = '.json'
/** An encrypted store's manifests are sealed (crypt.ts), not JSON: another suffix, so neither is taken for the other. */
export const manifestSuffixSealed = '.enc'
export const manifestFormat = 'vdiskfs-remote-manifest'
export const manifestVersion = 1

/** Backup ids: the first 32 hex digits of their manifest's BLAKE3-256. */
export const backupIdHexLength = 32

// Limits of the remote code, with their units last.
/** S3 requests one command keeps in flight (HEADs, PUTs, GETs). */
export const remoteRequestsInFlightMax = 32
/** A push closes a pack once it holds this many bytes (restic's 16 MiB): fewer, larger requests. */
export const packTargetBytes = 16 * 1024 * 1024
/** Packs one push uploads at once (each held in memory until it has landed). */
export const packUploadsInFlightMax = 4
/** Blocks a pull fetches at once (16 MiB at 64 KiB; the next batch is fetched while one is consumed), and the longest byte range it asks for in one GET. */
export const pullBatchBlocks = 256
export const pullRangeBytesMax = 4 * 1024 * 1024
/** Range GETs one pull, verify or gc keeps in flight. */
export const rangeRequestsInFlightMax = 8
/** gc repacks a pack (past the grace period) once more than this fraction of its bytes is no manifest's. */
export const repackDeadFraction = 0.25
/** The default grace period of a new store (PBS's 24 h 5 min): see docs/REMOTE.md, "Garbage collection". */
export const remoteGraceSecondsDefault = 24 * 3600 + 300
/** gc keeps chunks this much younger than its cutoff besides: S3 times have one-second resolution. */
export const remoteClockMarginMs = 2000
/** Passes over a slow push's chunks before its manifest (each must finish within grace/2) before it gives up. */
export const remoteRecheckPassesMax = 3
/** Pages one listing follows before it fails (1000 keys a page: 10^9 objects), and the longest continuation token. */
export const remoteListPagesMax = 1_000_000
export const remoteListTokenBytesMax = 4096
/** The S3 client's timeouts: a dead server must fail a command, not hang it. */
export const remoteConnectTimeoutMs = 5000
export const remoteRequestTimeoutMs = 120000

// The chunk object's format and encoder live in workers/chunk-object.ts (the CLI's workers build them too).
export { chunkMagic, chunkVersion, chunkEncodingRaw, chunkEncodingZstd, chunkHeaderBytes, encodeChunkHeader, encodeChunkObjectInto, sealRoom, zstdCompressBound } from '../../workers/chunk-object'
import { chunkEncodingRaw, chunkEncodingZstd, chunkHeaderBytes, chunkMagic, chunkVersion } from '../../workers/chunk-object'

/*
 * The largest object of each kind a remote command reads (S3Store.get refuses a longer one from its
 * Content-Length, or stops reading its body there): what a hostile endpoint can make the CLI hold.
 */
/** The store marker: four short fields (about 120 bytes). */
export const storeMarkerBytesMax = 4096
/**
 * A chunk: the header, then the largest block raw or zstd's bound for it (ZSTD_COMPRESSBOUND: n + n/256 at
 * 1 MiB), and in an encrypted store the seal's header and tag around it.
 */
export const chunkObjectBytesMax = chunkHeaderBytes + blockBytesMax + (blockBytesMax >> 8) + sealOverheadBytes
/**
 * A manifest: its fields (each name at most 255 bytes, 6 bytes of JSON escape each at worst) and one
 * entry per block of the largest volume at the smallest block size ('[index,"64 hex"],': 86 bytes at
 * most), but never past the longest string V8 holds (about 512 MiB, about 6 M blocks: a 400 GiB volume
 * fully written at 64 KiB blocks), which decoding needs.
 */
export const manifestFieldsBytesMax = 64 * 1024
export const manifestEntryBytesMax = 86
export const manifestBytesMax = Math.min(manifestFieldsBytesMax + manifestEntryBytesMax * (volumeBytesMax / blockBytesMin), bufferConstants.MAX_STRING_LENGTH) + sealOverheadBytes

/** A pack: its target, then one more chunk at most (a push closes it after the chunk that crosses the target). */
export const packBytesMax = packTargetBytes + chunkObjectBytesMax
/** A pack's index: one entry per chunk ('["64 hex",offset,length],': 90 bytes at most), at least 45 bytes a chunk. */
export const packIndexBytesMax = manifestFieldsBytesMax + Math.ceil(packBytesMax / 45) * 90 + sealOverheadBytes

/** The BLAKE3-256 of `data` as 64 hex digits (through the string form: blake-hash's Buffer one leaks, see workers/hash.ts). */
export function blake3Hex (data: Uint8Array): string {
  return Buffer.from(blake3UrlSafeBase64(data as Buffer), 'base64url').toString('hex')
}

export function chunkKey (prefix: string, id: string): string {
  return `${prefix}${chunksPrefix}${id.slice(0, 2)}/${id}`
}

export function manifestKey (prefix: string, id: string, suffix = manifestSuffix): string {
  return `${prefix}${manifestsPrefix}${id}${suffix}`
}

export function packKey (prefix: string, pack: string): string { return `${prefix}${packsPrefix}${pack}` }
export function packIndexKey (prefix: string, pack: string): string { return `${prefix}${indexesPrefix}${pack}` }

/** The pack id in a pack's key (`kind` 'packs/') or its index's ('indexes/'), or null when the key is neither. */
export function packIdOfKey (prefix: string, key: string, kind: string): string | null {
  const rest = key.startsWith(prefix + kind) ? key.slice(prefix.length + kind.length) : ''
  return /^[0-9a-f]{32}$/.test(rest) ? rest : null
}

/**
 * A pack's index: the pack's id and length, and for each chunk object in it (in the order they lie) its
 * object name (the chunk id, or in an encrypted store its keyed name), offset and length.
 */
export interface PackIndex { format: string, version: number, pack: string, packBytes: number, chunks: Array<[string, number, number]> }

export function encodePackIndex (pack: string, packBytes: number, chunks: Array<[string, number, number]>): Buffer {
  const index: PackIndex = { format: packIndexFormat, version: packIndexVersion, pack, packBytes, chunks }
  return Buffer.from(JSON.stringify(index) + '\n')
}

/** Decodes and checks pack `pack`'s index: its pack, and entries that tile the pack in order. Errors: CORRUPT naming `what`. */
export function decodePackIndex (pack: string, bytes: Buffer, what: string): PackIndex {
  let value: unknown
  try { value = JSON.parse(bytes.toString('utf8')) } catch { throw corrupt(`${what}: not JSON`) }
  const index = value as PackIndex
  if (index === null || typeof index !== 'object' || index.format !== packIndexFormat) throw corrupt(`${what}: not a vdiskfs pack index`)
  if (index.version !== packIndexVersion) throw new VdiskError('INVALID', `${what}: pack index version ${String(index.version)} is not supported (this vdiskfs reads version ${packIndexVersion})`)
  if (index.pack !== pack) throw corrupt(`${what}: it indexes pack ${String(index.pack)}`)
  if (!Number.isSafeInteger(index.packBytes) || index.packBytes <= 0 || index.packBytes > packBytesMax) throw corrupt(`${what}: invalid pack length`)
  if (!Array.isArray(index.chunks)) throw corrupt(`${what}: no chunk list`)
  let end = 0
  for (const entry of index.chunks) {
    if (!Array.isArray(entry) || entry.length !== 3 || typeof entry[0] !== 'string' || !/^[0-9a-f]{64}$/.test(entry[0]) || entry[1] !== end ||
      !Number.isSafeInteger(entry[2]) || entry[2] <= 0 || entry[2] > chunkObjectBytesMax) throw corrupt(`${what}: invalid chunk entry ${JSON.stringify(entry)}`)
    end += entry[2]
  }
  if (end !== index.packBytes) throw corrupt(`${what}: its chunks cover ${end} bytes of a pack of ${index.packBytes}`)
  return index
}

/** The chunk id in a chunk key, or null when the key is not a chunk's. */
export function chunkIdOfKey (prefix: string, key: string): string | null {
  const rest = key.startsWith(prefix + chunksPrefix) ? key.slice(prefix.length + chunksPrefix.length) : ''
  const match = /^([0-9a-f]{2})\/([0-9a-f]{64})$/.exec(rest)
  return match !== null && match[2].startsWith(match[1]) ? match[2] : null
}

/** The backup id in a manifest key, or null when the key is not a manifest's. */
export function backupIdOfKey (prefix: string, key: string, suffix = manifestSuffix): string | null {
  const rest = key.startsWith(prefix + manifestsPrefix) ? key.slice(prefix.length + manifestsPrefix.length) : ''
  const match = /^([0-9a-f]{32})(\.[a-z]+)$/.exec(rest)
  return match === null || match[2] !== suffix ? null : match[1]
}

export function isBackupId (text: string): boolean { return /^[0-9a-f]{32}$/.test(text) }


export interface ChunkHeader { encoding: number, rawBytes: number, id: string }

/** Decodes and checks a chunk object's header. Errors: CORRUPT naming `what`. */
export function decodeChunkHeader (object: Buffer, what: string): ChunkHeader {
  if (object.length < chunkHeaderBytes) throw corrupt(`${what}: ${object.length} bytes, shorter than a chunk header`)
  if (!object.subarray(0, 4).equals(chunkMagic)) throw corrupt(`${what}: not a vdiskfs chunk (bad magic)`)
  if (object.readUInt8(4) !== chunkVersion) throw corrupt(`${what}: chunk version ${object.readUInt8(4)} is not ${chunkVersion}`)
  const encoding = object.readUInt8(5)
  if (encoding !== chunkEncodingRaw && encoding !== chunkEncodingZstd) throw corrupt(`${what}: unknown chunk encoding ${encoding}`)
  if (object.readUInt16LE(6) !== 0) throw corrupt(`${what}: reserved chunk header bytes are not zero`)
  const rawBytes = object.readUInt32LE(8)
  if (rawBytes === 0 || rawBytes > blockBytesMax) throw corrupt(`${what}: block length ${rawBytes} out of range`)
  if (encoding === chunkEncodingRaw && object.length !== chunkHeaderBytes + rawBytes) throw corrupt(`${what}: raw chunk of ${object.length - chunkHeaderBytes} bytes, expected ${rawBytes}`)
  return { encoding, rawBytes, id: object.subarray(12, 44).toString('hex') }
}

/**
 * What a store's marker object holds. An encrypted store's (version 2) names its cipher and its key's
 * fingerprint (crypt.ts): not a secret, it tells a wrong key from damage.
 */
export interface StoreMarker { format: string, version: number, graceSeconds: number, created: string, encryption?: { cipher: string, keyFingerprint: string } }

export function decodeStoreMarker (text: string, what: string): StoreMarker {
  let value: unknown
  try { value = JSON.parse(text) } catch { throw corrupt(`${what}: the store marker is not JSON`) }
  const marker = value as StoreMarker
  if (marker === null || typeof marker !== 'object' || marker.format !== storeFormat) throw corrupt(`${what}: not a vdiskfs store marker`)
  if (marker.version !== storeVersion && marker.version !== storeVersionEncrypted) throw new VdiskError('INVALID', `${what}: store version ${String(marker.version)} is not supported (this vdiskfs reads versions ${storeVersion} and ${storeVersionEncrypted})`)
  if (typeof marker.graceSeconds !== 'number' || !(marker.graceSeconds > 0)) throw corrupt(`${what}: the store marker has no valid grace period`)
  if (marker.version === storeVersionEncrypted) {
    const e = marker.encryption
    if (e === null || typeof e !== 'object' || e.cipher !== sealCipherName || typeof e.keyFingerprint !== 'string' || !/^[0-9a-f]{4}(:[0-9a-f]{4}){7}$/.test(e.keyFingerprint)) {
      throw corrupt(`${what}: the marker of an encrypted store names no valid cipher and key fingerprint`)
    }
  } else if (marker.encryption !== undefined) throw corrupt(`${what}: a version ${storeVersion} store marker with an encryption field`)
  return marker
}

/**
 * A manifest: one backup in the store. `blocks` lists the backup's non-zero blocks in increasing index
 * order as [index, chunk id]; every other block reads as zeros. Every block is blockBytes long (the last one
 * padded with zeros when the size is not a multiple, as the pool and the export stream keep it). The
 * manifest's id is derived from its bytes, so
 * the same backup pushed twice is one manifest, and a damaged manifest does not match its id.
 */
export interface Manifest {
  format: string
  version: number
  /** The backup's stable identity (a UUID), its name, the volume it was taken from, the host, when it was taken. */
  identity: string
  name: string
  source: string
  /**
   * The source volume's identity (its UUID), when the backup's export stream carried it: a pull gives it to
   * the import, so that the receiving pool groups (prunes) the backup with the others of that source.
   * Absent in manifests written before it (their backups pull as of an unknown source).
   */
  sourceUuid?: string
  host: string
  created: string
  size: number
  blockBytes: number
  blocks: Array<[number, string]>
}

export function encodeManifest (manifest: Manifest): { id: string, bytes: Buffer } {
  const bytes = Buffer.from(JSON.stringify(manifest) + '\n')
  return { id: blake3Hex(bytes).slice(0, backupIdHexLength), bytes }
}

/**
 * Decodes a manifest fetched for backup `id` and checks it whole: its bytes against the id, every field,
 * the block list's order and bounds. Errors: CORRUPT naming the backup.
 */
export function decodeManifest (id: string, bytes: Buffer, keyedId?: (bytes: Buffer) => string): Manifest {
  const what = `remote backup ${id}`
  // An encrypted store's manifest ids are keyed (crypt.ts: RemoteKey.manifestId), a plain store's its BLAKE3.
  if ((keyedId === undefined ? blake3Hex(bytes).slice(0, backupIdHexLength) : keyedId(bytes)) !== id) throw corrupt(`${what}: its manifest is damaged (its checksum does not match its id)`)
  let value: unknown
  try { value = JSON.parse(bytes.toString('utf8')) } catch { throw corrupt(`${what}: its manifest is not JSON`) }
  const m = value as Manifest
  if (m === null || typeof m !== 'object' || m.format !== manifestFormat) throw corrupt(`${what}: not a vdiskfs manifest`)
  if (m.version !== manifestVersion) throw new VdiskError('INVALID', `${what}: manifest version ${String(m.version)} is not supported (this vdiskfs reads version ${manifestVersion})`)
  for (const key of ['identity', 'name', 'source', 'host', 'created'] as const) if (typeof m[key] !== 'string') throw corrupt(`${what}: manifest field ${key} missing`)
  if (m.sourceUuid !== undefined && (typeof m.sourceUuid !== 'string' || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(m.sourceUuid))) throw corrupt(`${what}: invalid source identity`)
  if (!Number.isSafeInteger(m.size) || m.size < 0) throw corrupt(`${what}: invalid size`)
  if (!Number.isSafeInteger(m.blockBytes) || m.blockBytes <= 0 || m.blockBytes > blockBytesMax) throw corrupt(`${what}: invalid block size`)
  if (!Array.isArray(m.blocks)) throw corrupt(`${what}: no block list`)
  const blockCount = Math.ceil(m.size / m.blockBytes)
  let previous = -1
  for (const entry of m.blocks) {
    if (!Array.isArray(entry) || entry.length !== 2 || !Number.isSafeInteger(entry[0]) || entry[0] <= previous || entry[0] >= blockCount ||
      typeof entry[1] !== 'string' || !/^[0-9a-f]{64}$/.test(entry[1])) throw corrupt(`${what}: invalid block list entry ${JSON.stringify(entry)}`)
    previous = entry[0]
  }
  return m
}

/**
 * The identity of the backup a manifest describes, for a pull: a UUID, or CORRUPT. decodeManifest lets
 * any string through (remote ls lists what a store holds); a pull names files after it (the pool's
 * lazy/UUID.refs, the hydrator's CONTROL_DIR/hydrate-UUID.log), where a hostile store's path would lead
 * outside them.
 */
export function pulledIdentity (id: string, manifest: Pick<Manifest, 'identity'>): string {
  if (!/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/.test(manifest.identity)) throw corrupt(`remote backup ${id}: its identity ${JSON.stringify(manifest.identity.slice(0, 80))} is not a UUID`)
  return manifest.identity
}

/** The bytes of the volume block `index` covers (the last block's padding left out), for messages. */
export function blockRange (size: number, blockBytes: number, index: number): { start: number, length: number } {
  const start = index * blockBytes
  return { start, length: Math.min(blockBytes, size - start) }
}
