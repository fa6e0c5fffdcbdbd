/**
 * A vdiskfs dedup store on S3 (the layout is in remote-format.ts, the reasons in docs/REMOTE.md): push a
 * backup's blocks (only the chunks the store lacks travel, the manifest last), read a backup's blocks back
 * verified against their ids, list, verify, remove and garbage-collect. It works on blocks; where they come
 * from (an export stream, an image file) and where they go (an import stream) is the caller's business.
 *
 * Garbage collection against pushes from other hosts (docs/REMOTE.md has the argument in full): gc
 * removes a chunk only when no manifest listed after its start T0 names it and the chunk was last
 * modified before T0 - grace. A push makes every chunk it relies on "recent" (uploaded by it, or seen
 * with a modification time within grace/4 of now, or touched: copied onto itself) and writes its manifest
 * within grace/2 of its first existence check, re-checking every chunk when it took longer. So a chunk a
 * push relies on is either named by a manifest gc lists, or too young for gc to remove.
 *
 * An encrypted store (crypt.ts; its marker is version 2) is the same store with three differences: a
 * chunk's object is named by a keyed hash of its id (RemoteKey.chunkName) and holds the plain chunk object
 * sealed; a manifest is sealed, named manifests/ID.enc with a keyed id; gc and verify work on object names.
 * Inside, manifests and chunk headers still carry the plain BLAKE3 ids, checked on every read.
 */
import * as zstd from 'zstd-napi/binding'
import { VdiskError, corrupt, invalid, notFound } from '../errors'
import {
  Manifest, StoreMarker, backupIdOfKey, blake3Hex, blockRange, chunkEncodingRaw, chunkEncodingZstd, chunkHeaderBytes, chunkIdOfKey,
  chunkKey, chunkObjectBytesMax, chunksPrefix, decodeChunkHeader, decodeManifest, decodeStoreMarker, encodeChunkHeader, encodeManifest, manifestBytesMax,
  manifestFormat, manifestKey, manifestVersion, manifestsPrefix, remoteClockMarginMs, remoteRecheckPassesMax, remoteGraceSecondsDefault,
  remoteRequestsInFlightMax, storeFormat, storeMarkerBytesMax, storeMarkerKey, storeVersion, storeVersionEncrypted, manifestSuffix, manifestSuffixSealed,
  PackIndex, decodePackIndex, encodePackIndex, indexesPrefix, packIdOfKey, packIndexBytesMax, packBytesMax, packIndexKey, packKey, packTargetBytes, packUploadsInFlightMax,
  packsPrefix, pullBatchBlocks, pullRangeBytesMax, rangeRequestsInFlightMax, repackDeadFraction, packIdHexLength, encodeChunkObjectInto, sealRoom
} from './remote-format'
import { trace } from '../trace'
import { ChunkOpener, newSharedBuffer } from './chunk-opener'
import { RemoteKey, sealCipherName, sealKindChunk, sealKindManifest, sealKindPackIndex } from './crypt'
import crypto from 'node:crypto'
import { isZeroBlock, worthCompressing } from '../../workers/protocol'
import { forEachLimited } from '../limited'
import { RemoteLocation, S3Store } from './s3-store'

/** One block of a volume: its index and its blockBytes bytes (the last one padded with zeros), or null for zeros. */
export interface Block { index: number, data: Buffer | null, hash?: Buffer | null }

/** What a push records about the backup besides its blocks. */
export interface BackupMeta { identity: string, name: string, source: string, sourceUuid?: string, host: string, created: string, size: number, blockBytes: number }

/** Test hooks: the gc race and network-fault tests pause a push or a pull here. */
export interface PushHooks { afterBatch?: () => Promise<void>, beforeManifest?: () => Promise<void> }

export interface PushResult {
  id: string
  /** False when the store already held this very manifest (the same backup pushed before). */
  created: boolean
  blocks: number
  chunksUploaded: number
  bytesUploaded: number
  chunksReused: number
  chunksTouched: number
  /** The stored size of the chunks uploaded (compressed, sealed), and every byte the push sent (packs, their indexes, the manifest). */
  chunkBytesUploaded: number
  objectBytesUploaded: number
  packsUploaded: number
}

export interface RemoteBackup { id: string, name: string, source: string, identity: string, host: string, created: string, pushed: string, size: number, blockBytes: number, blocks: number }

export interface GcReport {
  manifests: number
  /** Chunks in the store: in packs (each entry of each index) and alone (stores written before packs). */
  chunks: number
  chunksRemoved: number
  bytesRemoved: number
  chunksKeptYoung: number
  packs: number
  packsRemoved: number
  /** Sparse packs whose live chunks went to new packs (packsWritten of them), and those chunks' bytes. */
  packsRepacked: number
  packsWritten: number
  chunksRepacked: number
  bytesRepacked: number
  /** Packs without an index (a push cut off before it) past the grace period. */
  orphanPacksRemoved: number
  dryRun: boolean
}

export interface VerifyProblem { backup: string, name: string, start: number, length: number, chunk: string, problem: string }
export interface VerifyReport { backups: number, chunks: number, bytes: number, packs: number, problems: VerifyProblem[] }

/** Where a chunk object lies in a pack. */
interface PackedChunk { pack: string, offset: number, length: number }
/** A pack the store holds: its index, and the index's modification time (the pack's age, for gc). */
interface PackInfo { id: string, index: PackIndex, indexModifiedMs: number }
/** What fetching one chunk gave: its stored object and its block (read) or its block's length (check), or why not. */
interface Fetched { stored?: Buffer, data?: Buffer, length?: number, zstd?: boolean, error?: VdiskError }

/**
 * A block of a pull as it travels to the pool (RemoteStore.frames): `zstd`, the chunk's zstd frame as the
 * store keeps it (not decompressed or hashed here: the pool's workers do both before they store it, and
 * the pool keeps the frame); else the raw block, which the pool hashes too.
 */
export interface PulledBlock { index: number, id: string, data: Buffer, zstd: boolean }

/** zstd level of chunks: level 1 (about 770 MB/s against 600 for level 3 here, at a ratio within 0.01). */
const zstdLevel = 1
/** An encrypted push seals its new blocks in batches of this many bytes, in the CLI's worker threads (PushSealer). */
const sealBatchBytes = 2 * 1024 * 1024
/** At most this many batches out to the workers at once (two threads, each with one queued behind it). */
const sealBatchesInFlight = 4

export class RemoteStore {
  private readonly cctx = new zstd.CCtx()
  private readonly dctx = new zstd.DCtx()
  /** The store's packs and where each chunk object lies in them, as the last loadPacks() found them. */
  private packs: Map<string, PackInfo> | null = null
  private located = new Map<string, PackedChunk>()
  /** The stored bytes of the chunks read (what a pull needed, against what it downloaded: s3.bytesRead). */
  chunkBytesRead = 0

  private constructor (readonly s3: S3Store, readonly marker: StoreMarker, readonly key: RemoteKey | null) {
    this.cctx.setParameter(zstd.CParameter.compressionLevel, zstdLevel)
  }

  get encrypted (): boolean { return this.key !== null }
  private get manifestSuffix (): string { return this.key === null ? manifestSuffix : manifestSuffixSealed }

  /** The name of chunk `id`'s object: the id itself, or in an encrypted store its keyed hash. */
  chunkObjectName (id: string): string { return this.key === null ? id : this.key.chunkName(id) }
  /** The key of chunk `id`'s object. */
  chunkObjectKey (id: string): string { return chunkKey(this.prefix, this.chunkObjectName(id)) }
  manifestObjectKey (id: string): string { return manifestKey(this.prefix, id, this.manifestSuffix) }
  /** A key without the store's prefix: what a sealed object's associated data binds. */
  private relative (key: string): string { return key.slice(this.prefix.length) }

  get graceMs (): number { return this.marker.graceSeconds * 1000 }
  private get prefix (): string { return this.s3.prefix }

  /**
   * Opens the store at `location`; with `create`, makes the bucket and the store's marker when missing
   * (a marker another host wrote first wins: its grace period is the store's). Errors: NOT_FOUND when no
   * store is there, CORRUPT for a damaged marker, IO/NOT_PERMITTED from S3.
   */
  static async open (location: RemoteLocation, label: string, options: { create?: boolean, graceSeconds?: number, key?: RemoteKey | null } = {}): Promise<RemoteStore> {
    const s3 = new S3Store(location, label)
    const remoteKey = options.key ?? null
    try {
      const key = location.prefix + storeMarkerKey
      if (options.create === true) {
        await s3.ensureBucket()
        const marker: StoreMarker = { format: storeFormat, version: storeVersion, graceSeconds: options.graceSeconds ?? remoteGraceSecondsDefault, created: new Date().toISOString() }
        if (remoteKey !== null) {
          marker.version = storeVersionEncrypted
          marker.encryption = { cipher: sealCipherName, keyFingerprint: remoteKey.fingerprint }
        }
        await s3.putOnce(key, Buffer.from(JSON.stringify(marker) + '\n'))
      }
      const text = await s3.get(key, storeMarkerBytesMax)
      const where = `s3://${location.bucket}/${location.prefix}`
      if (text === null) throw notFound(`a vdiskfs store at remote ${label} (${where})`)
      const marker = decodeStoreMarker(text.toString('utf8'), `remote ${label}`)
      // The remote's definition says whether it is encrypted; the marker must agree (a marker replaced by a
      // plain one must not make this host write plaintext to a store it encrypts).
      if (marker.encryption !== undefined && remoteKey === null) {
        throw new VdiskError('NOT_PERMITTED', `remote ${label}: the store at ${where} is encrypted (key fingerprint ${marker.encryption.keyFingerprint}): give its key with --key FILE`)
      }
      if (marker.encryption === undefined && remoteKey !== null) {
        throw new VdiskError('INVALID', `remote ${label}: the store at ${where} is not encrypted: an encrypted remote needs a bucket or prefix of its own`)
      }
      if (marker.encryption !== undefined && remoteKey !== null && marker.encryption.keyFingerprint !== remoteKey.fingerprint) {
        throw new VdiskError('NOT_PERMITTED', `remote ${label}: wrong key: ${remoteKey.file ?? 'the key'} has fingerprint ${remoteKey.fingerprint}, the store at ${where} was made with ${marker.encryption.keyFingerprint}`)
      }
      return new RemoteStore(s3, marker, remoteKey)
    } catch (err) { s3.destroy(); throw err }
  }

  close (): void {
    this.s3.destroy()
    // Its threads end on their own time; nothing is waiting on them any more.
    this.chunkOpener?.close().catch(() => {})
    this.chunkOpener = null
  }

  // ---- chunks ----

  /** The object stored for chunk `id` holding `data`: the plain chunk object, sealed in an encrypted store. */
  encodeChunk (id: string, data: Buffer): Buffer {
    const plain = this.encodePlainChunk(id, data)
    return this.key === null ? plain : this.key.seal(sealKindChunk, this.relative(this.chunkObjectKey(id)), plain)
  }

  /**
   * How a push encodes each new chunk straight into its pack (`target`, room for chunkObjectBytesMax): its
   * plain chunk object, compressed; in an encrypted store built in a scratch buffer first, then sealed
   * into `target` under its name (workers/chunk-sealer.ts: the chunks sealed one after another share a salt).
   */
  private packEncoder (): (target: Buffer, id: string, name: string, data: Buffer) => number {
    const chunkSealer = this.key?.chunkSealer() ?? null
    if (chunkSealer === null) return (target, id, _name, data) => this.encodePlainChunkInto(target, id, data)
    const scratch = Buffer.allocUnsafe(chunkObjectBytesMax)
    return (target, id, name, data) => chunkSealer.seal(target, this.relative(chunkKey(this.prefix, name)), scratch.subarray(0, this.encodePlainChunkInto(scratch, id, data)))
  }

  /** A plain store's chunk object, compressed straight into `target` (room for chunkObjectBytesMax): its length. */
  private encodePlainChunkInto (target: Buffer, id: string, data: Buffer): number {
    return encodeChunkObjectInto(this.cctx, target, id, data)
  }

  /** Where encodePlainChunk compresses (zstd's bound for a block): one buffer, not one per chunk. */
  private scratch = Buffer.alloc(0)

  /**
   * The chunk object, in a buffer of exactly its size: compressed into this.scratch first, then copied
   * out (not a buffer of zstd's bound per chunk, kept as a view until its pack is written: garbage a
   * push made for every block).
   */
  private encodePlainChunk (id: string, data: Buffer): Buffer {
    const bound = zstd.compressBound(data.length)
    if (this.scratch.length < bound) this.scratch = Buffer.allocUnsafe(bound)
    const compressed = this.cctx.compress2(this.scratch, data)
    // Kept raw when compression saves less than an eighth, as the pool's sealer does.
    const raw = !worthCompressing(data.length, compressed)
    const payload = raw ? data : this.scratch.subarray(0, compressed)
    const object = Buffer.allocUnsafe(chunkHeaderBytes + payload.length)
    encodeChunkHeader(raw ? chunkEncodingRaw : chunkEncodingZstd, data.length, id).copy(object, 0)
    payload.copy(object, chunkHeaderBytes)
    return object
  }

  /** The block in chunk `id`, checked against its id. Errors: CORRUPT (damaged) or NOT_FOUND (missing), naming the chunk (and its pack). */
  async readChunk (id: string): Promise<Buffer> {
    await this.packsLoaded()
    const fetched = new Map<string, Fetched>()
    await this.fetchChunks([id], 'read', (chunk, result) => { fetched.set(chunk, result) })
    const result = fetched.get(id)
    if (result?.error !== undefined) throw result.error
    return result?.data as Buffer
  }

  /**
   * For a lazy pull's hydrator: makes the packs holding chunks `ids` recent as a push does (an index older
   * than grace/4 is touched, once each), so that gc spares them for a grace period from now even if the
   * backup's manifest is pruned meanwhile. Returns how many indexes it touched.
   */
  async keepChunks (ids: string[]): Promise<number> {
    await this.packsLoaded()
    const touches = new Map<string, Promise<boolean>>()
    for (const id of ids) await this.relyOn(this.chunkObjectName(id), touches)
    return touches.size
  }

  /**
   * For a lazy pull's hydrator (hydrator.ts): chunks `ids` (distinct) fetched by range GETs of their packs
   * (neighbours in one range) and each checked against its id, as a pull does: each one's block, or the
   * error (CORRUPT, NOT_FOUND) that stops it. S3 failures are thrown.
   */
  async fetchBlocks (ids: string[]): Promise<Map<string, Buffer | VdiskError>> {
    await this.packsLoaded()
    const out = new Map<string, Buffer | VdiskError>()
    await this.fetchChunks(ids, 'read', (chunk, result) => { out.set(chunk, result.error ?? result.data as Buffer) })
    return out
  }

  /**
   * The chunks that lie after chunk `id` in its pack, within `bytes` of its start, among `wanted` (object
   * name -> chunk id): what a read of `id` prefetches (a full push lays a backup's new chunks in block
   * order). Empty for a chunk stored alone or unknown.
   */
  following (id: string, bytes: number, wanted: Map<string, string>): string[] {
    const where = this.located.get(this.chunkObjectName(id))
    const pack = where === undefined ? undefined : this.packs?.get(where.pack)
    if (where === undefined || pack === undefined) return []
    const out: string[] = []
    for (const [name, offset, length] of pack.index.chunks) {
      if (offset <= where.offset) continue
      if (offset + length > where.offset + bytes) break
      const chunk = wanted.get(name)
      if (chunk !== undefined) out.push(chunk)
    }
    return out
  }

  /**
   * Where chunk `id` is stored, for messages and tests: its pack and byte range there, or its own object
   * (stores written before packs). Null when the store holds it nowhere (as loadPacks last found it).
   */
  chunkLocation (id: string): { key: string, start: number, length: number } | null {
    const located = this.located.get(this.chunkObjectName(id))
    if (located !== undefined) return { key: packKey(this.prefix, located.pack), start: located.offset, length: located.length }
    return null
  }

  /** What errors call chunk `id`: its id, in an encrypted store its object name too, and the pack and bytes it lies in. */
  private chunkWhat (id: string, where: PackedChunk | null = null): string {
    const inPack = where === null ? '' : `pack ${packsPrefix}${where.pack} bytes ${where.offset}-${where.offset + where.length - 1}`
    if (this.key === null) return where === null ? `chunk ${id}` : `chunk ${id} (${inPack})`
    return `chunk ${id} (object ${this.relative(this.chunkObjectKey(id))}${where === null ? '' : ` in ${inPack}`})`
  }

  /** In an encrypted store, the plain chunk object inside chunk `id`'s object, authenticated; else the object. */
  private unsealChunk (id: string, object: Buffer, what: string): Buffer {
    return this.key === null ? object : this.key.open(sealKindChunk, this.relative(this.chunkObjectKey(id)), object, what)
  }

  /** Chunk `id`'s block from its stored object, checked against its id; decompressed into `into` when it has room. */
  decodeChunk (id: string, stored: Buffer, what = this.chunkWhat(id), into?: Buffer): Buffer {
    return this.decodeOpened(id, this.unsealChunk(id, stored, what), what, into)
  }

  /** decodeChunk() of the plain chunk object (opened already in an encrypted store). */
  private decodeOpened (id: string, object: Buffer, what: string, into?: Buffer): Buffer {
    const header = decodeChunkHeader(object, what)
    if (header.id !== id) throw corrupt(`${what}: its header names chunk ${header.id}`)
    let data: Buffer
    if (header.encoding === chunkEncodingRaw) {
      data = object.subarray(chunkHeaderBytes)
    } else {
      data = into !== undefined && into.length >= header.rawBytes ? into.subarray(0, header.rawBytes) : Buffer.allocUnsafe(header.rawBytes)
      let length: number
      try { length = this.dctx.decompress(data, object.subarray(chunkHeaderBytes)) } catch (err) { throw corrupt(`${what}: does not decompress (${(err as Error).message})`) }
      if (length !== header.rawBytes) throw corrupt(`${what}: decompresses to ${length} bytes, expected ${header.rawBytes}`)
    }
    if (blake3Hex(data) !== id) throw corrupt(`${what}: damaged (its BLAKE3 does not match its id)`)
    return data
  }

  /**
   * For a pull (frames()): chunk `id`'s payload from its stored object, opened in an encrypted store
   * (authenticated: a flipped byte fails here) and its header checked (it names the chunk, a block of
   * `blockBytes`): a zstd frame no longer than the block, passed on as it is; a raw block; else (an
   * encoding the pool does not keep as it is) the block decoded and checked here. The content of a frame
   * or a raw block is checked by the pool, which hashes every block it stores.
   */
  private chunkPayload (id: string, object: Buffer, what: string, blockBytes: number): { data: Buffer, zstd: boolean } {
    const header = decodeChunkHeader(object, what)
    if (header.id !== id) throw corrupt(`${what}: its header names chunk ${header.id}`)
    if (header.rawBytes !== blockBytes) throw corrupt(`${what}: holds ${header.rawBytes} bytes, not the block's ${blockBytes}`)
    const payload = object.subarray(chunkHeaderBytes)
    if (header.encoding === chunkEncodingZstd && payload.length > 0 && payload.length <= blockBytes) return { data: payload, zstd: true }
    if (header.encoding === chunkEncodingRaw) return { data: payload, zstd: false }
    return { data: this.decodeOpened(id, object, what), zstd: false }
  }

  /**
   * Checks chunk `id`'s stored object as verify does and returns its block's length. A plain store's chunk
   * is decompressed and hashed against its id. An encrypted store's is authenticated (the GCM tag covers
   * every byte of the object and its name, so a flipped byte or a swapped object fails) and its inner
   * header must name the chunk, but it is not decompressed or hashed: what the tag proves, it does not check twice.
   */
  private checkChunkObject (id: string, object: Buffer, what: string): number {
    if (this.key === null) return this.decodeOpened(id, object, what).length
    const header = decodeChunkHeader(object, what)
    if (header.id !== id) throw corrupt(`${what}: its header names chunk ${header.id}`)
    return header.rawBytes
  }

  /**
   * Fetches chunks `ids` (distinct) and checks each ('read': its block, checked against its id; 'check': as
   * verify does), reporting each to `done`: a chunk in a pack comes with its neighbours in one range GET (up
   * to pullRangeBytesMax), one alone (stores written before packs) with a GET of its own. A damaged or
   * missing chunk is reported (CORRUPT, NOT_FOUND), not thrown; S3 failures are thrown, once every request
   * under way has ended.
   */
  private async fetchChunks (ids: string[], mode: 'read' | 'check' | { payloadOf: number }, done: (id: string, result: Fetched) => void, into?: () => Buffer): Promise<void> {
    const packed: Array<{ id: string, where: PackedChunk }> = []
    const alone: string[] = []
    for (const id of ids) {
      const where = this.located.get(this.chunkObjectName(id))
      if (where === undefined) alone.push(id); else packed.push({ id, where })
    }
    packed.sort((a, b) => a.where.pack.localeCompare(b.where.pack) || a.where.offset - b.where.offset)
    const ranges: Array<{ pack: string, start: number, length: number, chunks: typeof packed }> = []
    for (const chunk of packed) {
      const last = ranges[ranges.length - 1]
      if (last !== undefined && last.pack === chunk.where.pack && last.start + last.length === chunk.where.offset && last.length + chunk.where.length <= pullRangeBytesMax) {
        last.length += chunk.where.length
        last.chunks.push(chunk)
      } else ranges.push({ pack: chunk.where.pack, start: chunk.where.offset, length: chunk.where.length, chunks: [chunk] })
    }
    // `object`: the plain chunk object (an encrypted store's opened by the workers, chunkOpener), or why it did not open.
    const report = (id: string, stored: Buffer | null, what: string, object: Buffer | Error | null): void => {
      if (stored === null || object === null) { done(id, { error: notFound(`chunk ${id}`) }); return }
      this.chunkBytesRead += stored.length
      let result: Fetched
      try {
        if (object instanceof Error) throw object
        if (mode === 'read') result = { stored, data: this.decodeOpened(id, object, what, into?.()) }
        else if (mode === 'check') result = { stored, length: this.checkChunkObject(id, object, what) }
        else result = { stored, ...this.chunkPayload(id, object, what, mode.payloadOf) }
      } catch (err) {
        if (!(err instanceof VdiskError)) throw err
        result = { error: err }
      }
      done(id, result)
    }
    const settled = await Promise.allSettled([
      forEachLimited(ranges, rangeRequestsInFlightMax, async range => {
        let bytes: Buffer | null
        try { bytes = await this.s3.getRange(packKey(this.prefix, range.pack), range.start, range.length) } catch (err) {
          if (!(err instanceof VdiskError) || err.code !== 'CORRUPT') throw err
          for (const { id } of range.chunks) done(id, { error: err })
          return
        }
        const chunks = range.chunks.map(({ id, where }) => ({ id, offset: where.offset - range.start, length: where.length, what: this.chunkWhat(id, where) }))
        const opened = bytes === null ? null : await this.openChunks(bytes, chunks)
        chunks.forEach(({ id, offset, length, what }, i) => report(id, bytes === null ? null : bytes.subarray(offset, offset + length), what, opened === null ? null : opened[i]))
      }),
      forEachLimited(alone, remoteRequestsInFlightMax, async id => {
        let stored: Buffer | null
        try { stored = await this.s3.get(this.chunkObjectKey(id), chunkObjectBytesMax) } catch (err) {
          if (!(err instanceof VdiskError) || err.code !== 'CORRUPT') throw err
          done(id, { error: err })
          return
        }
        const what = this.chunkWhat(id)
        report(id, stored, what, stored === null ? null : (await this.openChunks(stored, [{ id, offset: 0, length: stored.length, what }]))[0])
      })
    ])
    for (const outcome of settled) if (outcome.status === 'rejected') throw outcome.reason
  }

  /**
   * The plain chunk objects of `chunks` (each chunk's place in `bytes`): a plain store's are the bytes; an
   * encrypted store's are opened by the worker threads (chunkOpener), each authenticated under its name,
   * or the CORRUPT error that says why not.
   */
  private async openChunks (bytes: Buffer, chunks: Array<{ id: string, offset: number, length: number, what: string }>): Promise<Array<Buffer | Error>> {
    if (this.key === null) return chunks.map(({ offset, length }) => bytes.subarray(offset, offset + length))
    return await this.chunkWorkers().open(bytes, chunks.map(({ id, offset, length, what }) => ({ offset, length, name: this.relative(this.chunkObjectKey(id)), what })))
  }

  /** An encrypted store's worker threads that open and seal chunks, started at the first task (close() ends them). */
  private chunkWorkers (): ChunkOpener {
    if (this.key === null) throw new Error('chunkWorkers: a plain store has none')
    this.chunkOpener ??= new ChunkOpener(this.key.sealKeyForWorkers())
    return this.chunkOpener
  }

  private chunkOpener: ChunkOpener | null = null

  /** How many chunks this store's pushes had sealed in worker threads (an encrypted store's: all of them; a test's proof). */
  chunksSealedInWorkers = 0

  // ---- packs ----

  /** A loadPacks() started ahead by preloadPacks(). */
  private preloading: Promise<unknown> | null = null

  /**
   * Starts reading the pack indexes now, without waiting (a lazy pull does while it reads the manifest):
   * the first read of a chunk waits for this load instead of starting another.
   */
  preloadPacks (): void {
    if (this.packs !== null || this.preloading !== null) return
    this.preloading = this.loadPacks()
    this.preloading.catch(() => {}) // a failed preload: the first reader loads them again, and sees the error itself
  }

  /** The packs loaded once (by a preload under way, else now), for a read that needs them. */
  private async packsLoaded (): Promise<void> {
    if (this.packs === null && this.preloading !== null) await this.preloading.catch(() => {})
    if (this.packs === null) await this.loadPacks()
  }

  /**
   * Lists the store's pack indexes and reads them (remoteRequestsInFlightMax at a time): from then on,
   * chunks are looked up there. A damaged index is an error (CORRUPT naming it), or, with `onDamaged`, left
   * out and reported to it. An index removed meanwhile (gc) is left out.
   */
  async loadPacks (onDamaged?: (id: string, err: VdiskError) => void): Promise<Map<string, PackInfo>> {
    const listed: Array<{ id: string, modifiedMs: number }> = []
    for await (const object of this.s3.list(this.prefix + indexesPrefix)) {
      const id = packIdOfKey(this.prefix, object.key, indexesPrefix)
      if (id !== null) listed.push({ id, modifiedMs: object.lastModifiedMs })
    }
    const packs = new Map<string, PackInfo>()
    await forEachLimited(listed, remoteRequestsInFlightMax, async ({ id, modifiedMs }) => {
      let index: PackIndex | null
      try { index = await this.readPackIndex(id) } catch (err) {
        if (onDamaged === undefined || !(err instanceof VdiskError) || err.code !== 'CORRUPT') throw err
        onDamaged(id, err)
        return
      }
      if (index !== null) packs.set(id, { id, index, indexModifiedMs: modifiedMs })
    })
    const located = new Map<string, PackedChunk>()
    for (const id of [...packs.keys()].sort()) {
      for (const [name, offset, length] of (packs.get(id) as PackInfo).index.chunks) if (!located.has(name)) located.set(name, { pack: id, offset, length })
    }
    this.packs = packs
    this.located = located
    trace(`pack indexes loaded (${packs.size})`)
    return packs
  }

  /** Pack `id`'s index, checked (and in an encrypted store authenticated), or null when it does not exist. Errors: CORRUPT naming it. */
  private async readPackIndex (id: string): Promise<PackIndex | null> {
    const key = packIndexKey(this.prefix, id)
    const stored = await this.s3.get(key, packIndexBytesMax)
    if (stored === null) return null
    const what = `remote ${this.s3.label}: pack index ${this.relative(key)}`
    const bytes = this.key === null ? stored : this.key.open(sealKindPackIndex, this.relative(key), stored, what)
    return decodePackIndex(id, bytes, what)
  }

  /**
   * Stores one pack: the pack object first, then its index, so that a pack is found (and its chunks relied
   * on) only once it is whole. Returns its id; its chunks are looked up there from then on.
   */
  private async writePack (body: Buffer, chunks: Array<[string, number, number]>): Promise<string> {
    const id = crypto.randomBytes(packIdHexLength / 2).toString('hex')
    if (!await this.s3.putOnce(packKey(this.prefix, id), body)) throw new VdiskError('IO', `remote ${this.s3.label}: pack ${id} exists already (a random id drawn twice?)`)
    const key = packIndexKey(this.prefix, id)
    const index = encodePackIndex(id, body.length, chunks)
    await this.s3.putOnce(key, this.key === null ? index : this.key.seal(sealKindPackIndex, this.relative(key), index))
    const info: PackInfo = { id, index: decodePackIndex(id, index, id), indexModifiedMs: Date.now() }
    this.packs?.set(id, info)
    for (const [name, offset, length] of chunks) if (!this.located.has(name)) this.located.set(name, { pack: id, offset, length })
    return id
  }

  /**
   * Chunk object `name` is in a pack this store found: makes sure gc spares that pack for as long as a
   * push may rely on it (its index recent: modified within grace/4 of now, else touched, once per push
   * and index through `touches`). False when the store does not hold it (or its index vanished meanwhile).
   */
  private async relyOn (name: string, touches: Map<string, Promise<boolean>>): Promise<'present' | 'touched' | 'missing'> {
    const where = this.located.get(name)
    const pack = where === undefined ? undefined : this.packs?.get(where.pack)
    if (pack === undefined) return 'missing'
    if (pack.indexModifiedMs >= Date.now() - this.graceMs / 4) return 'present'
    const key = packIndexKey(this.prefix, pack.id)
    let touching = touches.get(key)
    if (touching === undefined) {
      touching = this.s3.touch(key)
      touches.set(key, touching)
    }
    if (await touching) return 'touched'
    // Gone (gc removed it meanwhile): none of its chunks can be relied on.
    for (const [chunk] of pack.index.chunks) if (this.located.get(chunk)?.pack === pack.id) this.located.delete(chunk)
    return 'missing'
  }

  // ---- push ----

  /**
   * Stores a backup: every block of `blocks` (increasing indexes; all-zero blocks are left out), on top of
   * `base` when given (an incremental push: the blocks of `base` that `blocks` does not replace are kept).
   * Uploads only the chunks the store's packs lack, in new packs (packUploadsInFlightMax at once, each pack
   * before its index), then the manifest. Interrupted anywhere, it leaves no manifest, and the next push
   * re-uploads nothing in a pack whose index arrived. Errors: IO/NOT_PERMITTED from S3, CORRUPT when a
   * chunk vanished under a push that outlived half the grace period.
   */
  async push (meta: BackupMeta, blocks: AsyncIterable<Block>, options: { base?: Manifest, hooks?: PushHooks, onProgress?: (bytes: number) => void } = {}): Promise<PushResult> {
    const entries = baseEntries(meta, options.base)
    const result: PushResult = { id: '', created: false, blocks: 0, chunksUploaded: 0, bytesUploaded: 0, chunksReused: 0, chunksTouched: 0, chunkBytesUploaded: 0, objectBytesUploaded: 0, packsUploaded: 0 }
    const bytesWrittenBefore = this.s3.bytesWritten
    const settled = new Set<string>()
    // The first existence check: the listing of the packs' indexes.
    const firstCheck = performance.now()
    await this.loadPacks()
    const touches = new Map<string, Promise<boolean>>()
    const writer = new PackWriter(async (body, chunks) => {
      await this.writePack(body, chunks)
      result.packsUploaded++
      await options.hooks?.afterBatch?.()
    })
    // An encrypted store's new chunks are sealed on this thread (packEncoder); with VDISKFS_PUSH_SEAL_WORKERS=1,
    // in the CLI's worker threads (PushSealer: 2 MiB of blocks a task, their objects into the pack in the
    // blocks' order, by this loop alone), which took about 1.8 times the CPU (docs/REMOTE.md, "Figures").
    const inWorkers = this.key !== null && process.env.VDISKFS_PUSH_SEAL_WORKERS === '1'
    const encode = this.packEncoder()
    const sealer = !inWorkers ? null : new PushSealer(this.chunkWorkers(), zstdLevel, async (name, object) => {
      result.chunkBytesUploaded += object.length
      this.chunksSealedInWorkers++
      await writer.add(name, object)
    })
    try {
      for await (const block of blocks) {
        if (block.index < 0 || block.index * meta.blockBytes >= meta.size || (block.data !== null && block.data.length !== meta.blockBytes)) {
          throw invalid(`block ${block.index} (${block.data?.length ?? 0} bytes) does not fit a volume of ${meta.size} bytes`)
        }
        options.onProgress?.(meta.blockBytes)
        if (block.data === null || isZeroBlock(block.data)) { entries.delete(block.index); continue }
        const id = blake3Hex(block.data)
        // The source's own hash of the block, when it gave one, must agree: what it read is what is stored.
        if (block.hash !== undefined && block.hash !== null && block.hash.toString('hex') !== id) throw corrupt(`block ${block.index}: its bytes do not match the hash its source gave`)
        entries.set(block.index, id)
        if (settled.has(id)) continue
        settled.add(id)
        const name = this.chunkObjectName(id)
        const state = await this.relyOn(name, touches)
        if (state !== 'missing') {
          result.chunksReused++
          if (state === 'touched') result.chunksTouched++
          continue
        }
        result.chunksUploaded++
        result.bytesUploaded += block.data.length
        if (sealer !== null) {
          // Copied into the sealer's batch now: the source may fill block.data again once this loop goes on.
          await sealer.add(id, name, this.relative(chunkKey(this.prefix, name)), block.data)
          continue
        }
        const length = encode(writer.space(), id, name, block.data)
        result.chunkBytesUploaded += length
        await writer.commit(name, length)
      }
      await sealer?.finish()
      await writer.finish()
    } catch (err) {
      // The source, a seal or an upload failed: let the seals and uploads under way finish (or fail)
      // before saying so, so that nothing of this push is still working once it has returned.
      await sealer?.abandon()
      await writer.abandon()
      throw err
    }
    const manifest: Manifest = {
      format: manifestFormat, version: manifestVersion, identity: meta.identity, name: meta.name, source: meta.source, ...(meta.sourceUuid === undefined ? {} : { sourceUuid: meta.sourceUuid }),
      host: meta.host, created: meta.created, size: meta.size, blockBytes: meta.blockBytes, blocks: [...entries].sort((a, b) => a[0] - b[0])
    }
    await options.hooks?.beforeManifest?.()
    await this.recheckIfSlow(manifest, firstCheck, touches)
    const encoded = encodeManifest(manifest)
    const id = this.key === null ? encoded.id : this.key.manifestId(encoded.bytes)
    const key = this.manifestObjectKey(id)
    const created = await this.s3.putOnce(key, this.key === null ? encoded.bytes : this.key.seal(sealKindManifest, this.relative(key), encoded.bytes))
    return { ...result, id, created, blocks: manifest.blocks.length, objectBytesUploaded: this.s3.bytesWritten - bytesWrittenBefore }
  }

  /**
   * The manifest must land within grace/2 of the first existence check (`firstCheck`; see the file
   * comment): a push slower than that checks every chunk again (touching the old packs' indexes) and
   * starts the clock over, at most remoteRecheckPassesMax times.
   */
  private async recheckIfSlow (manifest: Manifest, firstCheck: number, touches: Map<string, Promise<boolean>>): Promise<void> {
    for (let pass = 1; performance.now() - firstCheck > this.graceMs / 2; pass++) {
      if (pass > remoteRecheckPassesMax) {
        throw new VdiskError('IO', `remote ${this.s3.label}: checking the chunks of this push takes longer than half the store's grace period (${this.marker.graceSeconds} s): the store needs a longer one`)
      }
      firstCheck = performance.now()
      touches.clear()
      await this.loadPacks()
      const ids = [...new Set(manifest.blocks.map(entry => entry[1]))]
      await forEachLimited(ids, remoteRequestsInFlightMax, async id => {
        const state = await this.relyOn(this.chunkObjectName(id), touches)
        if (state === 'missing' && await this.refreshLoneChunk(id) === 'missing') {
          throw corrupt(`remote ${this.s3.label}: chunk ${id} vanished during the push (it outlived half the store's grace period while gc ran): run the push again`)
        }
      })
    }
  }

  /** A chunk stored alone (stores written before packs; a base manifest may name one): made recent as a pack's index is. */
  private async refreshLoneChunk (id: string): Promise<'present' | 'touched' | 'missing'> {
    const key = this.chunkObjectKey(id)
    const info = await this.s3.head(key)
    if (info === null) return 'missing'
    // Within grace/4 of now (the server's clock against ours: the skew this tolerates) it is recent.
    if (info.lastModifiedMs >= Date.now() - this.graceMs / 4) return 'present'
    return await this.s3.touch(key) ? 'touched' : 'missing'
  }

  // ---- backups ----

  /** The manifest of backup `id`, checked. Errors: NOT_FOUND, CORRUPT. */
  async manifest (id: string): Promise<Manifest> {
    const key = this.manifestObjectKey(id)
    const stored = await this.s3.get(key, manifestBytesMax)
    if (stored === null) throw notFound(`backup ${id} in remote ${this.s3.label}`)
    if (this.key === null) return decodeManifest(id, stored)
    const remoteKey = this.key
    const bytes = remoteKey.open(sealKindManifest, this.relative(key), stored, `remote backup ${id}: its manifest (object ${this.relative(key)})`)
    return decodeManifest(id, bytes, plaintext => remoteKey.manifestId(plaintext))
  }

  /** Every backup in the store, oldest first (by creation time). Damaged manifests are errors (CORRUPT). */
  async backups (): Promise<RemoteBackup[]> {
    const list: RemoteBackup[] = []
    for await (const object of this.s3.list(this.prefix + manifestsPrefix)) {
      const id = backupIdOfKey(this.prefix, object.key, this.manifestSuffix)
      if (id === null) continue
      const m = await this.manifest(id)
      list.push({ id, name: m.name, source: m.source, identity: m.identity, host: m.host, created: m.created, pushed: new Date(object.lastModifiedMs).toISOString(), size: m.size, blockBytes: m.blockBytes, blocks: m.blocks.length })
    }
    return list.sort((a, b) => a.created.localeCompare(b.created) || a.id.localeCompare(b.id))
  }

  /**
   * The blocks of backup `manifest` (non-zero ones, increasing index), each checked against its id, fetched
   * pullBatchBlocks at a time (the next batch while this one is consumed), each batch's chunks by range
   * GETs of their packs. Errors: CORRUPT naming the backup and the byte range for a damaged or missing
   * chunk; IO from S3.
   */
  async * blocks (id: string, manifest: Manifest, hooks: { afterBatch?: () => Promise<void>, released?: () => Promise<void> } = {}): AsyncGenerator<{ index: number, data: Buffer, id: string }> {
    await this.packsLoaded()
    // hooks.released (resolves once the consumer holds none of the blocks yielded before it was called):
    // the batches are decompressed into three buffers taken in turns, not into a buffer per block (which
    // made V8 collect the whole heap every few dozen MiB of a pull). Batch m is fetched while batch m - 1
    // is being yielded and takes the buffer of batch m - 3: it waits for the released() called when batch
    // m - 1 was fetched, after batch m - 3 was yielded whole (called then, it has long resolved; called
    // now, it would wait for the consumer to take all of batch m - 2 and hold back the fetch).
    const turns = hooks.released === undefined ? null : [0, 1, 2].map(() => ({ buffer: Buffer.allocUnsafe(pullBatchBlocks * manifest.blockBytes), used: 0 }))
    let turn = 0
    let releasedBefore: Promise<void> = Promise.resolve()
    const fetch = async (start: number): Promise<Buffer[]> => {
      let into: (() => Buffer) | undefined
      if (turns !== null) {
        const wait = releasedBefore
        releasedBefore = (hooks.released as () => Promise<void>)()
        releasedBefore.catch(() => {}) // awaited by the next fetch
        await wait
        const target = turns[turn++ % turns.length]
        target.used = 0
        into = () => target.used < pullBatchBlocks ? target.buffer.subarray(target.used * manifest.blockBytes, ++target.used * manifest.blockBytes) : Buffer.allocUnsafe(manifest.blockBytes)
      }
      return await this.fetchBatch(id, manifest, manifest.blocks.slice(start, start + pullBatchBlocks), into)
    }
    const fetchAhead = (start: number): Promise<Buffer[]> => {
      const fetching = fetch(start)
      fetching.catch(() => {}) // awaited below; a consumer that stops early never sees it
      return fetching
    }
    let next = manifest.blocks.length > 0 ? fetchAhead(0) : null
    for (let start = 0; next !== null; start += pullBatchBlocks) {
      const data = await next
      next = start + pullBatchBlocks < manifest.blocks.length ? fetchAhead(start + pullBatchBlocks) : null
      const entries = manifest.blocks.slice(start, start + pullBatchBlocks)
      for (let i = 0; i < entries.length; i++) yield { index: entries[i][0], data: data[i], id: entries[i][1] }
      await hooks.afterBatch?.()
    }
  }

  /**
   * The blocks of backup `manifest` as a pull hands them to the pool (PulledBlock: zstd frames as the
   * store keeps them, not decompressed or hashed here), in increasing index, pullBatchBlocks at a time
   * (the next batch fetched while one is consumed). Errors as blocks() says, for what is checked here (a
   * missing chunk, an encrypted one that fails authentication, a header that does not name it); what the
   * pool finds wrong in a block's content, checkBlock() names.
   */
  async * frames (id: string, manifest: Manifest, hooks: { afterBatch?: () => Promise<void> } = {}): AsyncGenerator<PulledBlock> {
    await this.packsLoaded()
    const fetchAhead = (start: number): Promise<Fetched[]> => {
      const fetching = this.fetchEntries(id, manifest, manifest.blocks.slice(start, start + pullBatchBlocks), { payloadOf: manifest.blockBytes })
      fetching.catch(() => {}) // awaited below; a consumer that stops early never sees it
      return fetching
    }
    let next = manifest.blocks.length > 0 ? fetchAhead(0) : null
    for (let start = 0; next !== null; start += pullBatchBlocks) {
      const fetched = await next
      next = start + pullBatchBlocks < manifest.blocks.length ? fetchAhead(start + pullBatchBlocks) : null
      const entries = manifest.blocks.slice(start, start + pullBatchBlocks)
      for (let i = 0; i < entries.length; i++) yield { index: entries[i][0], id: entries[i][1], data: fetched[i].data as Buffer, zstd: fetched[i].zstd === true }
      await hooks.afterBatch?.()
    }
  }

  /**
   * Block `index` of backup `manifest` fetched again and checked here (decompressed, hashed against its
   * chunk id): for a pull the pool refused a block of, to say which chunk is wrong and where the store
   * keeps it. Throws that CORRUPT (as blocks() would); returns when the chunk checks.
   */
  async checkBlock (id: string, manifest: Manifest, index: number): Promise<void> {
    const entry = manifest.blocks.find(([at]) => at === index)
    if (entry === undefined) return
    await this.packsLoaded()
    await this.fetchBatch(id, manifest, [entry])
  }

  /** Chunks `entries` of backup `id` fetched (`mode` as fetchChunks), by entry; the first error as blocks() says. */
  private async fetchEntries (id: string, manifest: Manifest, entries: Array<[number, string]>, mode: 'read' | { payloadOf: number }, into?: () => Buffer): Promise<Fetched[]> {
    const fetched = new Map<string, Fetched>()
    for (const [, chunk] of entries) fetched.set(chunk, {})
    await this.fetchChunks([...fetched.keys()], mode, (chunk, result) => { fetched.set(chunk, result) }, into)
    return entries.map(([index, chunk]) => {
      const result = fetched.get(chunk) as Fetched
      if (result.error !== undefined) {
        const { start, length } = blockRange(manifest.size, manifest.blockBytes, index)
        const why = result.error.code === 'NOT_FOUND' ? `chunk ${chunk} is missing from the store` : result.error.message
        throw corrupt(`remote backup ${id} (${manifest.name}): bytes ${start}-${start + length - 1}: ${why}`)
      }
      return result
    })
  }

  /** The blocks of `entries` of backup `id`, each checked (errors as blocks() says). */
  private async fetchBatch (id: string, manifest: Manifest, entries: Array<[number, string]>, into?: () => Buffer): Promise<Buffer[]> {
    const results = await this.fetchEntries(id, manifest, entries, 'read', into)
    return entries.map(([index, chunk], i) => {
      const result = results[i]
      const data = result.data as Buffer
      if (data.length !== manifest.blockBytes) {
        throw corrupt(`remote backup ${id} (${manifest.name}): block ${index}: chunk ${chunk} holds ${data.length} bytes, not the block's length`)
      }
      return data
    })
  }

  /** Removes backup `id`'s manifest (its chunks go at the next gc past the grace period). */
  async removeBackup (id: string): Promise<void> {
    await this.s3.remove(this.manifestObjectKey(id))
  }

  // ---- verify ----

  /**
   * Reads every manifest, every pack index, and every chunk the manifests name (by range GETs of their
   * packs), and checks each: what is damaged or missing, and where (a damaged index is a problem of its
   * own, and the chunks only it located are then missing).
   */
  async verify (onProgress?: (done: number, total: number) => void): Promise<VerifyReport> {
    const report: VerifyReport = { backups: 0, chunks: 0, bytes: 0, packs: 0, problems: [] }
    const users = new Map<string, Array<{ backup: string, name: string, start: number, length: number }>>()
    for await (const object of this.s3.list(this.prefix + manifestsPrefix)) {
      const id = backupIdOfKey(this.prefix, object.key, this.manifestSuffix)
      if (id === null) continue
      report.backups++
      let m: Manifest
      try { m = await this.manifest(id) } catch (err) {
        if (!(err instanceof VdiskError) || err.code !== 'CORRUPT') throw err
        report.problems.push({ backup: id, name: '?', start: 0, length: 0, chunk: '', problem: err.message })
        continue
      }
      for (const [index, chunk] of m.blocks) {
        const list = users.get(chunk) ?? []
        list.push({ backup: id, name: m.name, ...blockRange(m.size, m.blockBytes, index) })
        users.set(chunk, list)
      }
    }
    const packs = (await this.loadPacks((_, err) => { report.problems.push({ backup: '', name: '', start: 0, length: 0, chunk: '', problem: err.message }) })).size
    const ids = [...users.keys()]
    const check = (id: string, result: Fetched): void => {
      report.chunks++
      onProgress?.(report.chunks, ids.length)
      if (result.error === undefined) { report.bytes += result.length as number; return }
      const problem = result.error.code === 'NOT_FOUND' ? 'missing' : result.error.message
      for (const use of users.get(id) ?? []) report.problems.push({ ...use, chunk: id, problem })
    }
    for (let start = 0; start < ids.length; start += pullBatchBlocks) await this.fetchChunks(ids.slice(start, start + pullBatchBlocks), 'check', check)
    report.problems.sort((a, b) => a.backup.localeCompare(b.backup) || a.start - b.start)
    return { ...report, packs }
  }

  // ---- gc ----

  /**
   * Frees what no manifest names, past the grace period (see the file comment and docs/REMOTE.md,
   * "Garbage collection" and "Repacking", which gives the order of the steps and why a crash anywhere
   * loses nothing): a pack none of whose chunks is named is removed (its index, then the pack); a sparse
   * pack has its named chunks copied into new packs (each pack, then its index) and is removed only once
   * every new index is written; a pack without an index (a push cut off) is removed; chunks stored alone
   * (stores written before packs) as before. A manifest or an index that cannot be read stops gc before it
   * removes anything: nothing is removed that the whole set of manifests does not prove unreferenced.
   */
  async gc (options: { dryRun?: boolean, hooks?: { afterCopy?: () => Promise<void> } } = {}): Promise<GcReport> {
    const dryRun = options.dryRun === true
    const cutoffMs = await this.gcCutoff()
    const { referenced, manifests } = await this.gcReferenced()
    const report: GcReport = { manifests, chunks: 0, chunksRemoved: 0, bytesRemoved: 0, chunksKeptYoung: 0, packs: 0, packsRemoved: 0, packsRepacked: 0, packsWritten: 0, chunksRepacked: 0, bytesRepacked: 0, orphanPacksRemoved: 0, dryRun }
    let packs: Map<string, PackInfo>
    try { packs = await this.loadPacks() } catch (err) { throw gcStopped(err) }
    report.packs = packs.size
    const { doomed, sparse, inStaying } = sortPacks(packs, referenced, cutoffMs, report)
    // The named chunks of the sparse packs that no staying pack holds too (once each).
    const toCopy = new Map<string, string>()
    for (const pack of sparse) for (const [name] of pack.index.chunks) if (referenced.has(name) && !inStaying.has(name)) toCopy.set(name, referenced.get(name) as string)
    report.packsRepacked = sparse.length
    report.chunksRepacked = toCopy.size
    // Copy first: every new pack and its index are written before any old pack goes.
    if (!dryRun && toCopy.size > 0) await this.gcCopy([...toCopy.values()], report)
    // A test hook: a gc cut off here (its copies written, nothing removed) must lose nothing.
    await options.hooks?.afterCopy?.()
    const orphans = await this.gcOrphanPacks(packs, cutoffMs)
    if (!dryRun) {
      await forEachLimited([...doomed, ...sparse], remoteRequestsInFlightMax, async pack => {
        // The index first: without it the pack is no one's, and a gc cut off here removes it as an orphan.
        await this.s3.remove(packIndexKey(this.prefix, pack.id))
        await this.s3.remove(packKey(this.prefix, pack.id))
      })
      await forEachLimited(orphans, remoteRequestsInFlightMax, async object => { await this.s3.remove(object.key) })
    }
    for (const object of orphans) report.bytesRemoved += object.size
    await this.gcLoneChunks(referenced, inStaying, cutoffMs, dryRun, report)
    return { ...report, packsRemoved: doomed.length + sparse.length, orphanPacksRemoved: orphans.length }
  }

  /** gc's T0 on the server's clock (the modification time of an object written now), less the grace period and the clocks' margin. */
  private async gcCutoff (): Promise<number> {
    const clockKey = this.prefix + 'gc-clock'
    await this.s3.remove(clockKey)
    await this.s3.putOnce(clockKey, Buffer.from(new Date().toISOString() + '\n'))
    const clock = await this.s3.head(clockKey)
    if (clock === null) throw new VdiskError('IO', `remote ${this.s3.label}: the gc clock object vanished`)
    return clock.lastModifiedMs - this.graceMs - remoteClockMarginMs
  }

  /** Every chunk a manifest names, object name -> chunk id (in an encrypted store the names are keyed hashes of the ids), and how many manifests. */
  private async gcReferenced (): Promise<{ referenced: Map<string, string>, manifests: number }> {
    const referenced = new Map<string, string>()
    let manifests = 0
    for await (const object of this.s3.list(this.prefix + manifestsPrefix)) {
      const id = backupIdOfKey(this.prefix, object.key, this.manifestSuffix)
      if (id === null) continue
      manifests++
      let m: Manifest
      try { m = await this.manifest(id) } catch (err) {
        if (err instanceof VdiskError && err.code === 'NOT_FOUND') continue // removed meanwhile (prune)
        throw gcStopped(err)
      }
      for (const [, chunk] of m.blocks) referenced.set(this.chunkObjectName(chunk), chunk)
    }
    return { referenced, manifests }
  }

  /** Reads and checks chunks `ids` and writes them into new packs (each pack, then its index). Any failure stops gc. */
  private async gcCopy (ids: string[], report: GcReport): Promise<void> {
    const writer = new PackWriter(async (body, chunks) => { await this.writePack(body, chunks); report.packsWritten++ })
    try {
      for (let start = 0; start < ids.length; start += pullBatchBlocks) {
        const fetched: Array<{ id: string, stored: Buffer }> = []
        await this.fetchChunks(ids.slice(start, start + pullBatchBlocks), 'check', (id, result) => {
          if (result.error !== undefined) throw gcStopped(result.error)
          fetched.push({ id, stored: result.stored as Buffer })
        })
        for (const { id, stored } of fetched) {
          report.bytesRepacked += stored.length
          await writer.add(this.chunkObjectName(id), stored)
        }
      }
      await writer.finish()
    } catch (err) {
      await writer.abandon()
      throw err instanceof VdiskError && err.message.startsWith('gc stopped') ? err : gcStopped(err)
    }
  }

  /** Packs without an index, older than the cutoff: listed after the indexes were, so a push's pack whose index came since is young. */
  private async gcOrphanPacks (packs: Map<string, PackInfo>, cutoffMs: number): Promise<Array<{ key: string, size: number }>> {
    const orphans: Array<{ key: string, size: number }> = []
    for await (const object of this.s3.list(this.prefix + packsPrefix)) {
      const id = packIdOfKey(this.prefix, object.key, packsPrefix)
      if (id === null || packs.has(id) || this.packs?.has(id) === true || object.lastModifiedMs >= cutoffMs) continue
      orphans.push(object)
    }
    return orphans
  }

  /** Chunks stored alone (stores written before packs): removed when no manifest names them, or a staying pack holds them too, and older than the cutoff. */
  private async gcLoneChunks (referenced: Map<string, string>, inStaying: Set<string>, cutoffMs: number, dryRun: boolean, report: GcReport): Promise<void> {
    const lone: Array<{ key: string, size: number }> = []
    for await (const object of this.s3.list(this.prefix + chunksPrefix)) {
      const id = chunkIdOfKey(this.prefix, object.key)
      if (id === null) continue
      report.chunks++
      // Named by a manifest, it stays, unless a staying pack holds it too (readers look in packs first).
      if (referenced.has(id) && !inStaying.has(id)) continue
      if (object.lastModifiedMs >= cutoffMs) { if (!referenced.has(id)) report.chunksKeptYoung++; continue }
      lone.push(object)
    }
    await forEachLimited(lone, remoteRequestsInFlightMax, async object => {
      if (!dryRun) await this.s3.remove(object.key)
      report.chunksRemoved++
      report.bytesRemoved += object.size
    })
  }
}

/** An error that stops gc before it removes anything, saying so. */
function gcStopped (err: unknown): VdiskError {
  return new VdiskError(err instanceof VdiskError ? err.code : 'IO', `gc stopped before removing anything: ${(err as Error).message}`)
}

/**
 * gc's sorting of the packs whose index is older than the cutoff: none of its chunks named (doomed), more
 * than repackDeadFraction of its bytes in chunks no manifest names (sparse: its named chunks are copied
 * first), or staying, as every pack with a younger index does. Counts chunks, removed and kept young in
 * `report`. inStaying: the chunk objects the staying packs hold.
 */
function sortPacks (packs: Map<string, PackInfo>, referenced: Map<string, string>, cutoffMs: number, report: GcReport): { doomed: PackInfo[], sparse: PackInfo[], inStaying: Set<string> } {
  const doomed: PackInfo[] = []
  const sparse: PackInfo[] = []
  const inStaying = new Set<string>()
  for (const pack of packs.values()) {
    const dead = pack.index.chunks.filter(([name]) => !referenced.has(name))
    report.chunks += pack.index.chunks.length
    const deadBytes = dead.reduce((sum, [, , length]) => sum + length, 0)
    if (dead.length > 0 && pack.indexModifiedMs >= cutoffMs) report.chunksKeptYoung += dead.length
    if (dead.length === 0 || pack.indexModifiedMs >= cutoffMs || (dead.length < pack.index.chunks.length && deadBytes <= pack.index.packBytes * repackDeadFraction)) {
      for (const [name] of pack.index.chunks) inStaying.add(name)
      continue
    }
    report.chunksRemoved += dead.length
    report.bytesRemoved += deadBytes
    if (dead.length === pack.index.chunks.length) doomed.push(pack); else sparse.push(pack)
  }
  return { doomed, sparse, inStaying }
}

/**
 * An encrypted push's new chunks, compressed and sealed in the CLI's worker threads: add() copies each
 * block into the batch being filled (sealBatchBytes), a full batch goes to the workers, and at most
 * sealBatchesInFlight batches are out at once; each batch's sealed objects go to `store` in the order their
 * blocks were added (the oldest batch is waited for first). A batch's blocks and its sealed objects lie in
 * one of sealBatchesInFlight + 1 slots of shared buffers, taken in turns: the slot a batch fills was last
 * used by the batch sealBatchesInFlight + 1 before, whose objects were stored before this one was begun
 * (send() waits for them first). Only the push's loop calls add() and finish(), one at a time: the
 * batches, the slots and the queue are its alone. The first failure is thrown by the next add() or by
 * finish(); abandon() waits for every batch out.
 */
class PushSealer {
  private readonly slots: Array<{ blocks: Buffer, sealed: Buffer }> = []
  private turn = 0
  private used = 0
  private chunks: Array<{ id: string, name: string, offset: number, length: number }> = []
  private names: string[] = []
  private readonly out: Array<Promise<{ names: string[], sealed: Buffer[] }>> = []

  constructor (private readonly workers: ChunkOpener, private readonly zstdLevel: number, private readonly store: (name: string, object: Buffer) => Promise<void>) {}

  /** Block `data` of chunk `id`: stored as object `name`, sealed under `sealedName` (its key below the store's prefix). */
  async add (id: string, name: string, sealedName: string, data: Buffer): Promise<void> {
    if (this.chunks.length > 0 && this.used + data.length > this.slot().blocks.length) await this.send()
    const slot = this.slot(data.length)
    data.copy(slot.blocks, this.used)
    this.chunks.push({ id, name: sealedName, offset: this.used, length: data.length })
    this.names.push(name)
    this.used += data.length
  }

  /** The slot the batch being filled goes in (made, or made larger for a block above sealBatchBytes, at its first block). */
  private slot (first = 0): { blocks: Buffer, sealed: Buffer } {
    let slot = this.slots[this.turn]
    if (slot === undefined || (this.used === 0 && slot.blocks.length < first)) {
      const bytes = Math.max(sealBatchBytes, first)
      slot = { blocks: newSharedBuffer(bytes), sealed: newSharedBuffer(0) }
      this.slots[this.turn] = slot
    }
    return slot
  }

  /** Sends the batch being filled, then stores the oldest batches until at most `keep` are out. */
  private async send (keep = sealBatchesInFlight - 1): Promise<void> {
    if (this.chunks.length > 0) {
      const slot = this.slot()
      const room = sealRoom(this.chunks.map(chunk => chunk.length))
      if (slot.sealed.length < room) slot.sealed = newSharedBuffer(room)
      const names = this.names
      const sealing = this.workers.seal(slot.blocks, this.chunks, slot.sealed, this.zstdLevel).then(sealed => ({ names, sealed }))
      // Failures are taken when the batch's turn comes (or by abandon()), not left unhandled meanwhile.
      sealing.catch(() => {})
      this.out.push(sealing)
      this.turn = (this.turn + 1) % (sealBatchesInFlight + 1)
    }
    this.used = 0
    this.chunks = []
    this.names = []
    while (this.out.length > keep) {
      const { names, sealed } = await this.out[0]
      void this.out.shift()
      // Copied into the pack: the slot is used again once this batch is stored.
      for (let i = 0; i < names.length; i++) await this.store(names[i], sealed[i])
    }
  }

  /** Seals what is left and stores every batch. */
  async finish (): Promise<void> { await this.send(0) }

  async abandon (): Promise<void> {
    await Promise.allSettled(this.out.splice(0))
  }
}

/**
 * Gathers chunk objects into packs of packTargetBytes and hands each full one to `write`, up to
 * packUploadsInFlightMax at once (each held in memory until written). The first failure is thrown by the
 * next add() or by finish(); abandon() waits for every write under way.
 *
 * A pack is filled in place: a buffer of packBytesMax, into which a push compresses each chunk directly
 * (space() and commit()), and which is used again for a later pack once its write has succeeded. A push
 * of 1 GiB made a buffer per chunk and another per pack (Buffer.concat) before: about 700 MB of buffers,
 * each counted by V8 towards its next full collection of the heap, which took a fifth of the push's CPU.
 */
class PackWriter {
  private buffer: Buffer | null = null
  private readonly free: Buffer[] = []
  private chunks: Array<[string, number, number]> = []
  private bytes = 0
  private readonly writing = new Set<Promise<void>>()
  private failure: { err: unknown } | null = null

  constructor (private readonly write: (body: Buffer, chunks: Array<[string, number, number]>) => Promise<void>) {}

  /** Where the next chunk object goes: at least chunkObjectBytesMax bytes, valid until the next commit() or add(). */
  space (): Buffer {
    this.buffer ??= this.free.pop() ?? Buffer.allocUnsafe(packBytesMax)
    return this.buffer.subarray(this.bytes)
  }

  /** The chunk object `name`, of `length` bytes, was written at the start of space(). */
  async commit (name: string, length: number): Promise<void> {
    this.chunks.push([name, this.bytes, length])
    this.bytes += length
    if (this.bytes >= packTargetBytes) await this.close()
  }

  /** Chunk object `name` (copied into the pack). */
  async add (name: string, object: Buffer): Promise<void> {
    object.copy(this.space())
    await this.commit(name, object.length)
  }

  private throwIfFailed (): void {
    if (this.failure !== null) throw this.failure.err
  }

  /** Starts writing the pack gathered so far (after waiting for a free slot). */
  private async close (): Promise<void> {
    this.throwIfFailed()
    if (this.chunks.length === 0 || this.buffer === null) return
    const buffer = this.buffer
    const body = buffer.subarray(0, this.bytes)
    const chunks = this.chunks
    this.buffer = null
    this.chunks = []
    this.bytes = 0
    while (this.writing.size >= packUploadsInFlightMax) await Promise.race(this.writing)
    this.throwIfFailed()
    // Its buffer is used again only after a write that succeeded: a failed one may still be sending it.
    const writing: Promise<void> = this.write(body, chunks)
      .then(() => { this.free.push(buffer) }, err => { this.failure ??= { err } })
      .finally(() => { this.writing.delete(writing) })
    this.writing.add(writing)
  }

  /** Writes the last pack and waits for every write: throws the first failure. */
  async finish (): Promise<void> {
    await this.close()
    await Promise.all([...this.writing])
    this.throwIfFailed()
  }

  async abandon (): Promise<void> {
    await Promise.all([...this.writing])
  }
}

/** An incremental push's starting entries: the blocks of `base` within the volume (none without a base). */
function baseEntries (meta: BackupMeta, base: Manifest | undefined): Map<number, string> {
  const entries = new Map<number, string>()
  if (base === undefined) return entries
  if (base.blockBytes !== meta.blockBytes) throw invalid('the base backup in the store has another block size: push it whole')
  const blockCount = Math.ceil(meta.size / meta.blockBytes)
  for (const [index, id] of base.blocks) if (index < blockCount) entries.set(index, id)
  return entries
}
