/**
 * Push and pull: the remote store on one side, a mounted pool's export and import streams on the other
 * (src/transfer, the stream format of docs/FORMAT.md). A push takes the blocks of a backup's export (full,
 * or since the newest backup of its lineage already in the remote) as the daemon sends them, without
 * encoding them into a stream, and stores them; a pull reads a backup's chunks and hands them to the
 * daemon's import as the store keeps them (a zstd frame as a zstd frame, which the daemon's workers open
 * and check against its id and the pool keeps as it is; no stream encoded and decoded in between), so the
 * pool makes the backup appear in one step or not at all.
 */
import { VdiskError, corrupt } from '../errors'
import { call } from '../control/client'
import { ResultOf } from '../control/operations'
import { StreamBlock, StreamHeader } from '../transfer/stream'
import { refusedBlockOf } from '../transfer/wire'
import { exportBlocks, importBlocks } from './transfer-client'
import { Manifest, pulledIdentity } from '../remote/remote-format'
import { PushHooks, PushResult, RemoteStore } from '../remote/store'
import { testPause } from '../remote/test-pause'

export interface Progress { add: (n: number) => void, total: (n: number) => void }

type LocalVolume = ResultOf<'ls'>[number]

export interface PushReport extends PushResult { name: string, since: string | null }

/**
 * Pushes backup `name` of the pool mounted at `mountpoint`. Incremental (unless `full`) on the newest
 * older backup of the same lineage (taken from the same volume) that the remote holds. Errors: those of
 * the store, the export, and NOT_FOUND for a backup that does not exist.
 */
export async function pushBackup (store: RemoteStore, mountpoint: string, name: string, options: { host: string, full: boolean, progress: Progress }): Promise<PushReport> {
  const volumes = await call(mountpoint, 'ls')
  const backup = volumes.find(v => v.kind === 'backup' && v.name === name)
  if (backup === undefined) throw new VdiskError('NOT_FOUND', `backups/${name} does not exist`)
  const uuidOf = async (volume: LocalVolume): Promise<string> => (await call(mountpoint, 'uuid', { kind: volume.kind, name: volume.name })).uuid
  const inRemote = new Map((await store.backups()).map(b => [b.identity, b.id]))
  const already = inRemote.get(await uuidOf(backup))
  if (already !== undefined && !options.full) {
    // Pushed before (by this pool, or pulled from the remote): the store holds it whole already.
    const manifest = await store.manifest(already)
    return { id: already, created: false, blocks: manifest.blocks.length, chunksUploaded: 0, bytesUploaded: 0, chunksReused: 0, chunksTouched: 0, chunkBytesUploaded: 0, objectBytesUploaded: 0, packsUploaded: 0, name, since: null }
  }
  let base: { name: string, manifest: Manifest } | null = null
  if (!options.full && backup.sourceId !== null) {
    // The newest older backup of the same lineage (taken from the same volume) that the remote holds;
    // else, when that volume is a clone, the backup it stands on, and so on up (a pulled backup, say).
    const lineage = volumes.filter(v => v.kind === 'backup' && v.sourceId === backup.sourceId && v.createdMs < backup.createdMs).sort((a, b) => b.createdMs - a.createdMs)
    const byId = (id: number | null): LocalVolume | undefined => volumes.find(v => v.id === id)
    for (let source = byId(backup.sourceId); source?.kind === 'clone';) {
      const base = byId(source.sourceId)
      if (base?.kind !== 'backup' || lineage.includes(base)) break
      lineage.push(base)
      source = byId(base.sourceId)
    }
    for (const candidate of lineage) {
      const id = inRemote.get(await uuidOf(candidate))
      if (id !== undefined) { base = { name: candidate.name, manifest: await store.manifest(id) }; break }
    }
  }
  // The daemon's blocks straight into the store: no stream encoded and decoded in between.
  // store.push is done with each block (hashed, compressed into its pack) before it asks for the next:
  // the blocks need no buffer of their own (docs/REMOTE.md, "Figures").
  const { header, blocks } = await exportBlocks(mountpoint, 'backup', name, { ...(base === null ? {} : { since: base.name }), reuse: true })
  try {
    if (base !== null && header.baseUuid !== base.manifest.identity) throw corrupt(`the export of backups/${name} is based on ${header.baseUuid ?? 'nothing'}, not on ${base.manifest.identity}`)
    options.progress.total(header.records * header.blockBytes)
    const hooks: PushHooks = { afterBatch: async () => await testPause('push-batch'), beforeManifest: async () => await testPause('push-manifest') }
    // The blocks end only after the daemon's end frame and the count its header announced, so the
    // manifest (written after the last block) never names blocks of an export that failed.
    // The source's identity and label as the export carries them (docs/TRANSFER.md): a pull hands them to the import.
    const source = header.source ?? null
    const result = await store.push({ identity: header.uuid, name: header.name, source: source?.label ?? backup.sourceLabel ?? '', ...(source === null ? {} : { sourceUuid: source.uuid }), host: options.host, created: new Date(header.createdMs).toISOString(), size: header.size, blockBytes: header.blockBytes },
      blocks, { base: base?.manifest, hooks, onProgress: options.progress.add })
    return { ...result, name, since: base?.name ?? null }
  } finally {
    // A failed push must not leave the export running: its socket would keep this process (and the
    // daemon's read of the backup) alive.
    await blocks.return(undefined)
  }
}

/**
 * Pulls backup `id` of the remote into the pool mounted at `mountpoint` as backups/NAME.img. Every chunk
 * is checked against its id before it is stored (by the daemon's workers, which keep its zstd frame). Errors: CORRUPT naming the backup and byte
 * range for a damaged or missing chunk, NOT_FOUND, those of the import.
 */
export async function pullBackup (store: RemoteStore, mountpoint: string, id: string, name: string, progress: Progress): Promise<{ id: string, name: string, size: number, blocks: number, bytesDownloaded: number, chunkBytesDownloaded: number }> {
  const bytesReadBefore = store.s3.bytesRead
  const chunkBytesBefore = store.chunkBytesRead
  const manifest = await store.manifest(id)
  // The source's identity travels as an import's would: the pool groups the backup with its source's others.
  const source = manifest.sourceUuid === undefined ? null : { uuid: manifest.sourceUuid, label: manifest.source }
  const header: StreamHeader = { name: manifest.name, blockBytes: manifest.blockBytes, uuid: pulledIdentity(id, manifest), baseUuid: null, size: manifest.size, createdMs: Date.parse(manifest.created), records: manifest.blocks.length, source }
  progress.total(manifest.blocks.length * manifest.blockBytes)
  let sourceError: unknown = null
  // Each chunk as the store keeps it: a zstd frame goes to the daemon as it is, which decompresses and
  // hashes it in its workers against the id before it stores it, and stores the frame (no decompression
  // and hashing here, no compression there). Frames are views of the range GETs' bytes, which stay the
  // socket's until written.
  async function * blocks (): AsyncGenerator<StreamBlock> {
    try {
      for await (const block of store.frames(id, manifest, { afterBatch: async () => await testPause('pull-batch') })) {
        progress.add(manifest.blockBytes)
        yield { index: block.index, data: block.data, hash: Buffer.from(block.id, 'hex'), zstd: block.zstd }
      }
    } catch (err) { sourceError = err; throw err }
  }
  try {
    await importBlocks(mountpoint, name, header, blocks())
  } catch (err) {
    // The import failed because the remote did: say what the remote did.
    if (sourceError !== null) throw sourceError
    // The daemon refused a block's bytes: which chunk, and where the store keeps it, is found by
    // fetching it again and checking it here (CORRUPT naming them); should it check, the daemon's word stands.
    const refused = err instanceof VdiskError && err.code === 'CORRUPT' ? refusedBlockOf(err.message) : null
    if (refused !== null) await store.checkBlock(id, manifest, refused)
    throw err
  }
  if (sourceError !== null) throw sourceError
  // Every byte received (manifest, indexes, packs), and the stored size of the chunks in it: what packs cost a pull.
  return { id, name, size: manifest.size, blocks: manifest.blocks.length, bytesDownloaded: store.s3.bytesRead - bytesReadBefore, chunkBytesDownloaded: store.chunkBytesRead - chunkBytesBefore }
}
