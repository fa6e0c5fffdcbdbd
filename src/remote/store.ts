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
  manifestFormat, manifestKey, manifestVersion, manifestsPrefix, remoteBatchBlocks, remoteClockMarginMs, remoteRecheckPassesMax, remoteGraceSecondsDefault,
  remoteRequestsInFlightMax, storeFormat, storeMarkerBytesMax, storeMarkerKey, storeVersion, storeVersionEncrypted, manifestSuffix, manifestSuffixSealed
} from './remote-format'
import { RemoteKey, sealCipherName, sealKindChunk, sealKindManifest } from './crypt'
import { RemoteLocation, S3Store } from './s3-store'

/** One block of a volume: its index and its blockBytes bytes (the last one padded with zeros), or null for zeros. */
export interface Block { index: number, data: Buffer | null }

/** What a push records about the backup besides its blocks. */
export interface BackupMeta { identity: string, name: string, source: string, host: string, created: string, size: number, blockBytes: number }

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
}

export interface RemoteBackup { id: string, name: string, source: string, identity: string, host: string, created: string, pushed: string, size: number, blockBytes: number, blocks: number }

export interface GcReport { manifests: number, chunks: number, chunksRemoved: number, bytesRemoved: number, chunksKeptYoung: number, dryRun: boolean }

export interface VerifyProblem { backup: string, name: string, start: number, length: number, chunk: string, problem: string }
export interface VerifyReport { backups: number, chunks: number, bytes: number, problems: VerifyProblem[] }

/** zstd level of chunks: level 1 (about 770 MB/s against 600 for level 3 here, at a ratio within 0.01). */
const zstdLevel = 1

export class RemoteStore {
  private readonly cctx = new zstd.CCtx()
  private readonly dctx = new zstd.DCtx()

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

  close (): void { this.s3.destroy() }

  // ---- chunks ----

  /** The object stored for chunk `id` holding `data`: the plain chunk object, sealed in an encrypted store. */
  encodeChunk (id: string, data: Buffer): Buffer {
    const plain = this.encodePlainChunk(id, data)
    return this.key === null ? plain : this.key.seal(sealKindChunk, this.relative(this.chunkObjectKey(id)), plain)
  }

  private encodePlainChunk (id: string, data: Buffer): Buffer {
    const output = Buffer.allocUnsafe(chunkHeaderBytes + zstd.compressBound(data.length))
    const compressed = this.cctx.compress2(output.subarray(chunkHeaderBytes), data)
    // Kept raw when compression saves less than an eighth (as the pool's sealer does, roughly).
    if (compressed >= data.length - (data.length >> 3)) return Buffer.concat([encodeChunkHeader(chunkEncodingRaw, data.length, id), data])
    encodeChunkHeader(chunkEncodingZstd, data.length, id).copy(output, 0)
    return output.subarray(0, chunkHeaderBytes + compressed)
  }

  /** The block in chunk `id`, checked against its id. Errors: CORRUPT (damaged) or NOT_FOUND (missing), naming the chunk only. */
  async readChunk (id: string): Promise<Buffer> {
    const object = await this.s3.get(this.chunkObjectKey(id), chunkObjectBytesMax)
    if (object === null) throw notFound(`chunk ${id}`)
    return this.decodeChunk(id, object)
  }

  /** What errors call chunk `id`: its id, and in an encrypted store its object too (the name the store knows). */
  private chunkWhat (id: string): string {
    return this.key === null ? `chunk ${id}` : `chunk ${id} (object ${this.relative(this.chunkObjectKey(id))})`
  }

  /** In an encrypted store, the plain chunk object inside chunk `id`'s object, authenticated; else the object. */
  private unsealChunk (id: string, object: Buffer): Buffer {
    return this.key === null ? object : this.key.open(sealKindChunk, this.relative(this.chunkObjectKey(id)), object, this.chunkWhat(id))
  }

  decodeChunk (id: string, stored: Buffer): Buffer {
    const what = this.chunkWhat(id)
    const object = this.unsealChunk(id, stored)
    const header = decodeChunkHeader(object, what)
    if (header.id !== id) throw corrupt(`${what}: its header names chunk ${header.id}`)
    let data: Buffer
    if (header.encoding === chunkEncodingRaw) {
      data = object.subarray(chunkHeaderBytes)
    } else {
      data = Buffer.allocUnsafe(header.rawBytes)
      let length: number
      try { length = this.dctx.decompress(data, object.subarray(chunkHeaderBytes)) } catch (err) { throw corrupt(`${what}: does not decompress (${(err as Error).message})`) }
      if (length !== header.rawBytes) throw corrupt(`${what}: decompresses to ${length} bytes, expected ${header.rawBytes}`)
    }
    if (blake3Hex(data) !== id) throw corrupt(`${what}: damaged (its BLAKE3 does not match its id)`)
    return data
  }

  // ---- push ----

  /**
   * Stores a backup: every block of `blocks` (increasing indexes; all-zero blocks are left out), on top of
   * `base` when given (an incremental push: the blocks of `base` that `blocks` does not replace are kept).
   * Uploads only the chunks the store lacks, then the manifest. Interrupted anywhere, it leaves no manifest,
   * and the next push re-uploads nothing that arrived. Errors: IO/NOT_PERMITTED from S3, CORRUPT when a
   * chunk vanished under a push that outlived half the grace period.
   */
  async push (meta: BackupMeta, blocks: AsyncIterable<Block>, options: { base?: Manifest, hooks?: PushHooks, onProgress?: (bytes: number) => void } = {}): Promise<PushResult> {
    const entries = new Map<number, string>()
    if (options.base !== undefined) {
      if (options.base.blockBytes !== meta.blockBytes) throw invalid('the base backup in the store has another block size: push it whole')
      const blockCount = Math.ceil(meta.size / meta.blockBytes)
      for (const [index, id] of options.base.blocks) if (index < blockCount) entries.set(index, id)
    }
    const result: PushResult = { id: '', created: false, blocks: 0, chunksUploaded: 0, bytesUploaded: 0, chunksReused: 0, chunksTouched: 0 }
    const settled = new Set<string>()
    let firstCheck: number | null = null
    let batch: Array<{ id: string, data: Buffer }> = []
    // One batch is checked and uploaded while the next is read from the source: two batches in memory.
    let inFlight: Promise<void> = Promise.resolve()
    const flush = async (): Promise<void> => {
      const pending = batch
      batch = []
      await inFlight
      if (pending.length === 0) return
      firstCheck ??= performance.now()
      // eslint-disable-next-line require-atomic-updates -- flush is only called by the one loop below and once after it, each call awaited, so no other call sets inFlight between its await and this assignment
      inFlight = forEachLimited(pending, remoteRequestsInFlightMax, async ({ id, data }) => {
        const state = await this.ensureChunk(id, data)
        if (state === 'uploaded') { result.chunksUploaded++; result.bytesUploaded += data.length } else result.chunksReused++
        if (state === 'touched') result.chunksTouched++
      }).then(async () => await options.hooks?.afterBatch?.())
      // Its failure surfaces at the next flush; until then nobody awaits it.
      inFlight.catch(() => {})
    }
    try {
      for await (const block of blocks) {
        if (block.index < 0 || block.index * meta.blockBytes >= meta.size || (block.data !== null && block.data.length !== meta.blockBytes)) {
          throw invalid(`block ${block.index} (${block.data?.length ?? 0} bytes) does not fit a volume of ${meta.size} bytes`)
        }
        options.onProgress?.(meta.blockBytes)
        if (block.data === null || isZero(block.data)) { entries.delete(block.index); continue }
        const id = blake3Hex(block.data)
        entries.set(block.index, id)
        if (settled.has(id)) continue
        settled.add(id)
        batch.push({ id, data: block.data })
        if (batch.length >= remoteBatchBlocks) await flush()
      }
    } catch (err) {
      // The source failed: let the uploads under way finish (or fail) before saying so, so that nothing
      // of this push is still writing once it has returned.
      await inFlight.catch(() => {})
      throw err
    }
    await flush()
    await inFlight
    const manifest: Manifest = {
      format: manifestFormat, version: manifestVersion, identity: meta.identity, name: meta.name, source: meta.source, host: meta.host, created: meta.created,
      size: meta.size, blockBytes: meta.blockBytes, blocks: [...entries].sort((a, b) => a[0] - b[0])
    }
    result.blocks = manifest.blocks.length
    await options.hooks?.beforeManifest?.()
    // The manifest must land within grace/2 of the first existence check (see the file comment); a push
    // slower than that checks every chunk again (touching the old ones) and starts the clock over.
    for (let pass = 1; firstCheck !== null && performance.now() - firstCheck > this.graceMs / 2; pass++) {
      if (pass > remoteRecheckPassesMax) {
        throw new VdiskError('IO', `remote ${this.s3.label}: checking the chunks of this push takes longer than half the store's grace period (${this.marker.graceSeconds} s): the store needs a longer one`)
      }
      firstCheck = performance.now()
      const ids = [...new Set(manifest.blocks.map(entry => entry[1]))]
      await forEachLimited(ids, remoteRequestsInFlightMax, async id => {
        if (await this.refreshChunk(id) === 'missing') {
          throw corrupt(`remote ${this.s3.label}: chunk ${id} vanished during the push (it outlived half the store's grace period while gc ran): run the push again`)
        }
      })
    }
    const encoded = encodeManifest(manifest)
    const id = this.key === null ? encoded.id : this.key.manifestId(encoded.bytes)
    const key = this.manifestObjectKey(id)
    result.id = id
    result.created = await this.s3.putOnce(key, this.key === null ? encoded.bytes : this.key.seal(sealKindManifest, this.relative(key), encoded.bytes))
    return result
  }

  /** Makes sure chunk `id` is stored and recent enough for gc to spare it (see the file comment). */
  private async ensureChunk (id: string, data: Buffer): Promise<'uploaded' | 'present' | 'touched'> {
    const state = await this.refreshChunk(id)
    if (state !== 'missing') return state
    // 412 means another push stored the very same chunk meanwhile: as good as ours, and just written.
    await this.s3.putOnce(this.chunkObjectKey(id), this.encodeChunk(id, data))
    return 'uploaded'
  }

  private async refreshChunk (id: string): Promise<'present' | 'touched' | 'missing'> {
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
   * `remoteRequestsInFlightMax` at a time and `remoteBatchBlocks` ahead at most. Errors: CORRUPT naming the
   * backup and the byte range for a damaged or missing chunk; IO from S3.
   */
  async * blocks (id: string, manifest: Manifest, hooks: { afterBatch?: () => Promise<void> } = {}): AsyncGenerator<{ index: number, data: Buffer, id: string }> {
    // The next batch is fetched while this one is consumed: two batches in memory.
    const fetch = (start: number): Promise<Buffer[]> => {
      const fetching = this.fetchBatch(id, manifest, manifest.blocks.slice(start, start + remoteBatchBlocks))
      fetching.catch(() => {}) // awaited below; a consumer that stops early never sees it
      return fetching
    }
    let next = manifest.blocks.length > 0 ? fetch(0) : null
    for (let start = 0; next !== null; start += remoteBatchBlocks) {
      const data = await next
      next = start + remoteBatchBlocks < manifest.blocks.length ? fetch(start + remoteBatchBlocks) : null
      const entries = manifest.blocks.slice(start, start + remoteBatchBlocks)
      for (let i = 0; i < entries.length; i++) yield { index: entries[i][0], data: data[i], id: entries[i][1] }
      await hooks.afterBatch?.()
    }
  }

  /** The blocks of `entries` of backup `id`, each checked (errors as blocks() says). */
  private async fetchBatch (id: string, manifest: Manifest, entries: Array<[number, string]>): Promise<Buffer[]> {
    const data = new Array<Buffer>(entries.length)
    await forEachLimited(entries.map((entry, i) => ({ entry, i })), remoteRequestsInFlightMax, async ({ entry: [index, chunk], i }) => {
      try {
        data[i] = await this.readChunk(chunk)
      } catch (err) {
        if (!(err instanceof VdiskError) || (err.code !== 'NOT_FOUND' && err.code !== 'CORRUPT')) throw err
        const { start, length } = blockRange(manifest.size, manifest.blockBytes, index)
        const why = err.code === 'NOT_FOUND' ? `chunk ${chunk} is missing from the store` : err.message
        throw corrupt(`remote backup ${id} (${manifest.name}): bytes ${start}-${start + length - 1}: ${why}`)
      }
      if (data[i].length !== manifest.blockBytes) {
        throw corrupt(`remote backup ${id} (${manifest.name}): block ${index}: chunk ${chunk} holds ${data[i].length} bytes, not the block's length`)
      }
    })
    return data
  }

  /** Removes backup `id`'s manifest (its chunks go at the next gc past the grace period). */
  async removeBackup (id: string): Promise<void> {
    await this.s3.remove(this.manifestObjectKey(id))
  }

  // ---- verify ----

  /**
   * Checks chunk `id` as verify does and returns its block's length. A plain store's chunk is decompressed and
   * hashed against its id. An encrypted store's is authenticated (the GCM tag covers every byte of the
   * object and its name, so a flipped byte or a swapped object fails) and its inner header must name the
   * chunk, but it is not decompressed or hashed: what the tag proves, it does not check twice.
   */
  async checkChunk (id: string): Promise<number> {
    if (this.key === null) return (await this.readChunk(id)).length
    const object = await this.s3.get(this.chunkObjectKey(id), chunkObjectBytesMax)
    if (object === null) throw notFound(`chunk ${id}`)
    const what = this.chunkWhat(id)
    const header = decodeChunkHeader(this.unsealChunk(id, object), what)
    if (header.id !== id) throw corrupt(`${what}: its header names chunk ${header.id}`)
    return header.rawBytes
  }

  /** Reads every manifest and every chunk they name, and checks each: what is damaged or missing, and where. */
  async verify (onProgress?: (done: number, total: number) => void): Promise<VerifyReport> {
    const report: VerifyReport = { backups: 0, chunks: 0, bytes: 0, problems: [] }
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
    const ids = [...users.keys()]
    let done = 0
    await forEachLimited(ids, remoteRequestsInFlightMax, async id => {
      let problem: string | null = null
      try {
        const length = await this.checkChunk(id)
        report.bytes += length
      } catch (err) {
        if (!(err instanceof VdiskError) || (err.code !== 'NOT_FOUND' && err.code !== 'CORRUPT')) throw err
        problem = err.code === 'NOT_FOUND' ? 'missing' : err.message
      }
      report.chunks++
      onProgress?.(++done, ids.length)
      if (problem === null) return
      for (const use of users.get(id) ?? []) report.problems.push({ ...use, chunk: id, problem })
    })
    report.problems.sort((a, b) => a.backup.localeCompare(b.backup) || a.start - b.start)
    return report
  }

  // ---- gc ----

  /**
   * Removes the chunks no manifest names that are older than the grace period (see the file comment and
   * docs/REMOTE.md). A manifest that cannot be read stops gc before it removes anything: nothing is
   * removed that the whole set of manifests does not prove unreferenced.
   */
  async gc (options: { dryRun?: boolean } = {}): Promise<GcReport> {
    // T0 on the server's clock: the modification time of an object written now.
    const clockKey = this.prefix + 'gc-clock'
    await this.s3.remove(clockKey)
    await this.s3.putOnce(clockKey, Buffer.from(new Date().toISOString() + '\n'))
    const clock = await this.s3.head(clockKey)
    if (clock === null) throw new VdiskError('IO', `remote ${this.s3.label}: the gc clock object vanished`)
    const cutoffMs = clock.lastModifiedMs - this.graceMs - remoteClockMarginMs
    const referenced = new Set<string>()
    let manifests = 0
    for await (const object of this.s3.list(this.prefix + manifestsPrefix)) {
      const id = backupIdOfKey(this.prefix, object.key, this.manifestSuffix)
      if (id === null) continue
      manifests++
      let m: Manifest
      try { m = await this.manifest(id) } catch (err) {
        if (err instanceof VdiskError && err.code === 'NOT_FOUND') continue // removed meanwhile (prune)
        throw new VdiskError(err instanceof VdiskError ? err.code : 'IO', `gc stopped before removing anything: ${(err as Error).message}`)
      }
      // Object names: in an encrypted store, the keyed hashes of the ids.
      for (const [, chunk] of m.blocks) referenced.add(this.chunkObjectName(chunk))
    }
    const report: GcReport = { manifests, chunks: 0, chunksRemoved: 0, bytesRemoved: 0, chunksKeptYoung: 0, dryRun: options.dryRun === true }
    const doomed: Array<{ key: string, size: number }> = []
    for await (const object of this.s3.list(this.prefix + chunksPrefix)) {
      const id = chunkIdOfKey(this.prefix, object.key)
      if (id === null) continue
      report.chunks++
      if (referenced.has(id)) continue
      if (object.lastModifiedMs >= cutoffMs) { report.chunksKeptYoung++; continue }
      doomed.push(object)
    }
    await forEachLimited(doomed, remoteRequestsInFlightMax, async object => {
      if (options.dryRun !== true) await this.s3.remove(object.key)
      report.chunksRemoved++
      report.bytesRemoved += object.size
    })
    return report
  }
}

/** Runs `work` on every item, `limit` at a time; the first error stops new work and is thrown. */
export async function forEachLimited<T> (items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  let failed: unknown = null
  const runner = async (): Promise<void> => {
    while (failed === null && next < items.length) {
      const item = items[next++]
      try { await work(item) } catch (err) { failed ??= err }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, runner))
  if (failed !== null) throw failed
}

function isZero (data: Buffer): boolean {
  if (data.byteOffset % 8 === 0 && data.length % 8 === 0) {
    const words = new BigUint64Array(data.buffer, data.byteOffset, data.length / 8)
    for (let i = 0; i < words.length; i++) if (words[i] !== 0n) return false
    return true
  }
  for (let i = 0; i < data.length; i++) if (data[i] !== 0) return false
  return true
}
