/**
 * Lazy pulls, the CLI's side (issue #22; the daemon's is volume/lazy.ts, the reasons docs/REMOTE.md "Lazy
 * pull"). createLazyBackup() makes backups/NAME at once: the manifest's blocks go to the daemon as
 * references (their ids, no bytes), through the import's machinery (atomic, resumable); the chunks the
 * pool lacks become absent chunks. hydrate() then fills them in: it holds the store's credentials and
 * key (the daemon never does), connects to the daemon (hydrateStream), fetches at once each chunk a
 * reader waits for (and what follows it in its pack, up to pullRangeBytesMax: the next blocks, for a
 * full push), and walks the manifest in order in the background, asking the daemon which chunks are
 * still missing (lazyMissing) and sending those. Every chunk is checked against its id here (as a pull
 * does) and again by the daemon before it is stored.
 *
 * Faults: an S3 error or a daemon gone (killed, restarting) is retried every retryDelayMs until
 * retryMs passed without progress, then hydrate() fails (the pull stays in progress: `pull --lazy
 * --resume` starts again). A chunk the store has damaged or lacks is logged and left absent (reads of
 * it fail with EIO); the walk goes on.
 */
import net from 'node:net'
import { VdiskError } from '../errors'
import { call, openStream, readReply } from '../control/client'
import { StreamHeader } from '../transfer/stream'
import { ByteReader, frameData, frameEnd, frameFlush, frameHead, frameHeadBytes, frameRef, frameWant, readFrame, send } from '../transfer/wire'
import { Manifest, pullBatchBlocks, pullRangeBytesMax, pulledIdentity } from '../remote/remote-format'
import { RemoteStore } from '../remote/store'
import { testPause } from '../remote/test-pause'
import { trace } from '../trace'

/** How long hydrate() keeps retrying without progress, by default, and how long it waits between tries. */
export const hydrateRetryMsDefault = 10 * 60 * 1000
const retryDelayMs = 1000
/** Blocks the background walk sends between flushes (the daemon stores a group at a time), and prefetched ones. */
const walkGroupBlocks = 32
const wantGroupBlocks = 16
/** How many chunk ids a session remembers having sent (to skip fetching them again). */
const sentChunksMax = 65536

export interface LazyPullResult { id: string, name: string, uuid: string, size: number, blocks: number, absentBlocks: number, dedupedBlocks: number, resumedBlocks: number }

/** A lazy pull in progress, as the daemon reports it (lazyPulls). */
export interface LazyPullInfo { uuid: string, backup: string, name: string | null, remote: string, manifest: string, chunks: number, missing: number, hydrator: boolean }

/**
 * Makes backups/NAME from backup `id` of the store at once, its blocks references to the store's chunks
 * (remote `remote` of the pool). Errors: those of the store (NOT_FOUND, CORRUPT for the manifest) and of
 * the import (EXISTS ...).
 */
export async function createLazyBackup (store: RemoteStore, remote: string, mountpoint: string, id: string, name: string, known?: Manifest): Promise<LazyPullResult> {
  // The caller's copy of the manifest when it read it (a 1 GiB image's is about 1 MiB of JSON, checked against its id).
  const manifest = known ?? await store.manifest(id)
  const source = manifest.sourceUuid === undefined ? null : { uuid: manifest.sourceUuid, label: manifest.source }
  const header: StreamHeader = { name: manifest.name, blockBytes: manifest.blockBytes, uuid: pulledIdentity(id, manifest), baseUuid: null, size: manifest.size, createdMs: Date.parse(manifest.created), records: manifest.blocks.length, source }
  // The image's head comes with the backup (a VM boots from it, and its first read need not wait for a
  // hydrator): fetched while the daemon opens the import.
  const head = fetchHead(store, manifest)
  head.catch(() => {})
  const opened = await openStream(mountpoint, 'lazyPullStream', { header, name, remote, manifest: id })
  const socket = opened.socket
  trace('import opened')
  try {
    // The daemon's last line: read from now on (it may come early, with the reason it stopped).
    const reply = readReply('lazyPullStream', socket, opened.rest, mountpoint)
    reply.catch(() => {})
    // Every block of a head chunk goes with its bytes, not only the head's: a chunk is never both
    // absent and stored in one import batch.
    const bytes = await head
    trace(`head fetched (${bytes.size} chunks)`)
    // The ref frames are written straight into buffers of refWriteFrames heads, one write each (a new
    // buffer each time: the socket holds a written one until it is sent), not a buffer per frame joined.
    let refs = Buffer.allocUnsafe(refWriteFrames * frameHeadBytes)
    let used = 0
    const flush = async (): Promise<void> => {
      if (used === 0) return
      const full = refs.subarray(0, used)
      refs = Buffer.allocUnsafe(refWriteFrames * frameHeadBytes)
      used = 0
      await send(socket, full)
    }
    for (const [index, chunk] of manifest.blocks) {
      const data = bytes.get(chunk)
      if (data !== undefined) {
        await flush()
        await send(socket, frameHead(frameData, index, Buffer.from(chunk, 'hex')))
        await send(socket, data)
        continue
      }
      writeRefHead(refs, used, index, chunk)
      used += frameHeadBytes
      if (used === refs.length) await flush()
    }
    await flush()
    await send(socket, frameHead(frameEnd, 0, null))
    trace('references sent')
    const { result } = await reply
    trace('daemon replied')
    const r = result as { backup: { uuid: string }, absentBlocks: number, dedupedBlocks: number, resumedBlocks: number }
    return { id, name, uuid: r.backup.uuid, size: manifest.size, blocks: manifest.blocks.length, absentBlocks: r.absentBlocks, dedupedBlocks: r.dedupedBlocks, resumedBlocks: r.resumedBlocks }
  } finally {
    socket.destroy()
  }
}

/** Ref frames (of 41 bytes) per write of createLazyBackup. */
const refWriteFrames = 1024

/** A ref frame's head for block `index`, chunk `chunk` (64 hex digits), written at `at` of `target` (as frameHead would make it). */
function writeRefHead (target: Buffer, at: number, index: number, chunk: string): void {
  target.writeUInt8(frameRef, at)
  target.writeUInt32LE(index % 0x100000000, at + 1)
  target.writeUInt32LE(Math.floor(index / 0x100000000), at + 5)
  if (target.write(chunk, at + 9, 32, 'hex') !== 32) throw new VdiskError('CORRUPT', `a malformed chunk id ${chunk}`)
}

/** How much of the image's start `pull --lazy` fetches before the backup exists (lazyHeadBytes of the image). */
export const lazyHeadBytes = 4 * 1024 * 1024

/**
 * The blocks of the first lazyHeadBytes of the image, by chunk id, each checked against its id. A chunk
 * that cannot be fetched (damaged, missing) is left out: it stays absent, for the hydrator (which logs it).
 */
async function fetchHead (store: RemoteStore, manifest: Manifest): Promise<Map<string, Buffer>> {
  const ids = [...new Set(manifest.blocks.filter(([index]) => index * manifest.blockBytes < lazyHeadBytes).map(([, chunk]) => chunk))]
  const out = new Map<string, Buffer>()
  if (ids.length === 0) return out
  let blocks: Map<string, Buffer | VdiskError>
  // The store failing now is the hydrator's to retry: the head stays absent, as the rest.
  try { blocks = await store.fetchBlocks(ids) } catch { return out }
  for (const [chunk, block] of blocks) if (!(block instanceof VdiskError)) out.set(chunk, block)
  return out
}

/** The lazy pulls in progress in the pool mounted at `mountpoint`. */
export async function lazyPulls (mountpoint: string): Promise<LazyPullInfo[]> {
  return await call(mountpoint, 'lazyPulls') as LazyPullInfo[]
}

const sleep = async (ms: number): Promise<void> => { await new Promise(resolve => setTimeout(resolve, ms)) }

/** Waits until lazy pull `uuid` is in progress in the pool mounted at `mountpoint` (its backup made), at most `ms`. */
async function appeared (mountpoint: string, uuid: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms
  for (;;) {
    try {
      if ((await lazyPulls(mountpoint)).some(p => p.uuid === uuid)) return
    } catch {}
    if (Date.now() > deadline) throw new VdiskError('INVALID', `no lazy pull of the backup with identity ${uuid} appeared in ${mountpoint} within ${ms / 1000} s`)
    await sleep(100)
  }
}

/**
 * Whether `err` may pass by itself: retried. S3 or the daemon away (IO; NOT_FOUND: no daemon serves the
 * mountpoint, while it is mounted again). Another hydrator connected (BUSY) and anything else are final.
 */
function transient (err: unknown): boolean {
  if (!(err instanceof VdiskError)) return true
  return err.code === 'IO' || err.code === 'NOT_FOUND'
}

export interface HydrateOptions {
  retryMs?: number
  log?: (line: string) => void
  /** Started with the pull, before its backup exists: wait up to this long for the pull to appear. */
  awaitMs?: number
}

/**
 * Fills in lazy pull `uuid` (backup `id` of the store) in the pool mounted at `mountpoint` until nothing
 * is missing. Returns how many chunks it sent. Errors: BUSY (another hydrator is connected), the last
 * transient error once retryMs passed without progress, and final errors of the store or the daemon.
 */
export async function hydrate (store: RemoteStore, mountpoint: string, id: string, uuid: string, options: HydrateOptions = {}): Promise<{ sent: number }> {
  const retryMs = options.retryMs ?? hydrateRetryMsDefault
  const log = options.log ?? (() => {})
  const started = performance.now()
  let manifest: Manifest | null = null
  let ready = false
  // Chunks in manifest order (distinct), and object name -> chunk id, for prefetching.
  const order: string[] = []
  let byName = new Map<string, string>()
  // What the sessions report: chunks sent, where the walk is (a new session goes on from there), and
  // when the last chunk was sent (retries give up retryMs after it).
  const state = { sent: 0, cursor: 0, lastProgress: Date.now() }
  const progress = (n: number): void => { state.sent += n; if (n > 0) state.lastProgress = Date.now() }
  const at = (cursor: number): void => { state.cursor = cursor }
  for (;;) {
    try {
      if (!ready) {
        manifest = await store.manifest(id)
        await store.loadPacks()
        const seen = new Set<string>()
        order.length = 0
        for (const [, chunk] of manifest.blocks) if (!seen.has(chunk)) { seen.add(chunk); order.push(chunk) }
        byName = new Map(order.map(chunk => [store.chunkObjectName(chunk), chunk]))
        const touched = await store.keepChunks(order)
        if ((options.awaitMs ?? 0) > 0) await appeared(mountpoint, uuid, options.awaitMs as number)
        ready = true
        log(`hydrate: remote backup ${id} read (${order.length} chunks; ${touched} old pack indexes touched, so that gc spares them) after ${(performance.now() - started).toFixed(0)} ms`)
      }
      const session = await runSession(store, mountpoint, uuid, order, byName, state.cursor, log, progress, at)
      if (session === 'done') {
        log(`hydrate: ${state.sent} chunks sent in ${((performance.now() - started) / 1000).toFixed(1)} s: the backup is whole`)
        return { sent: state.sent }
      }
      // A pass ended with chunks still missing (sent to a daemon killed before it stored them, or damaged
      // in the store): the next pass walks from the start, asking which.
      at(0)
      if (session === 'stuck') throw new VdiskError('CORRUPT', `remote backup ${id}: some of its chunks cannot be fetched (damaged or missing in the store; see the log): their blocks read as EIO`)
    } catch (err) {
      if (!transient(err) || Date.now() - state.lastProgress > retryMs) throw err
      log(`hydrate: ${(err as Error).message}; trying again in ${retryDelayMs / 1000} s`)
      await sleep(retryDelayMs)
    }
  }
}

type Outcome = 'done' | 'again' | 'stuck'

/**
 * One connection to the daemon: serves its wants and walks the chunks from `from`. Returns 'done' when
 * the pull is whole, 'again' when the walk ended with chunks missing that this pass did not see fail,
 * 'stuck' when only chunks that failed are missing. Throws what the connection or the store throws.
 */
async function runSession (store: RemoteStore, mountpoint: string, uuid: string, order: string[], byName: Map<string, string>, from: number,
  log: (line: string) => void, progress: (n: number) => void, at: (cursor: number) => void): Promise<Outcome> {
  // Done already (whole, or its backup removed): nothing to connect for.
  if (!(await lazyPulls(mountpoint)).some(p => p.uuid === uuid)) return 'done'
  const opened = await openStream(mountpoint, 'hydrateStream', { uuid })
  log(`hydrate: connected to the daemon of ${mountpoint}, walking from chunk ${from}`)
  const session = new HydrateSession(store, mountpoint, uuid, opened.socket, byName, log, progress)
  session.readFrames(opened.rest, (opened.result as { blockBytes: number }).blockBytes)
  session.startServingWants()
  try {
    const walked = await session.walk(order, from, at)
    return walked === 'done' ? 'done' : await session.finish(walked.missingSeen)
  } finally {
    await session.close()
  }
}

/**
 * A hydrator's connection to the daemon, in named steps: readFrames (the daemon's wants, and its end),
 * serveWants (each wanted chunk fetched at once, with what follows it in its pack), walk (the manifest's
 * chunks in order, those still missing fetched and sent, holding back while wants are served), finish
 * (the end frame, and what the pool still lacks), close.
 */
class HydrateSession {
  private readonly failed = new Set<string>()
  /** Chunks this session sent (a daemon killed before it stored them is a new session's business). */
  private readonly sentChunks = new Set<string>()
  private sentThisPass = 0
  /** Why the session ended early (the connection gone, a final error): thrown at the next check(). */
  private closed: unknown = null
  /** Wakes serveWants when a want comes or the session ends. */
  private wake: (() => void) | null = null
  /** Chunks readers wait for, not yet being fetched. */
  private readonly urgent: string[] = []
  private servingWants = false
  private stopped = false
  private ended: Promise<void> = Promise.resolve()
  private serving: Promise<void> = Promise.resolve()

  constructor (private readonly store: RemoteStore, private readonly mountpoint: string, private readonly uuid: string, private readonly socket: net.Socket,
    private readonly byName: Map<string, string>, private readonly log: (line: string) => void, private readonly progress: (n: number) => void) {}

  private check (): void { if (this.closed !== null) throw this.closed }

  /** Reads the daemon's frames until its end frame: each want is queued for serveWants. */
  readFrames (rest: Buffer, blockBytes: number): void {
    const reader = new ByteReader(this.socket, rest)
    this.ended = (async () => {
      for (;;) {
        const frame = await readFrame(reader, blockBytes)
        if (frame === null) throw new VdiskError('IO', `the vdiskfs daemon of ${this.mountpoint} closed the hydrator's connection`)
        if (frame.kind === frameEnd) return
        if (frame.kind === frameWant && frame.hash !== null) { this.urgent.push(frame.hash.toString('hex')); this.wake?.() }
      }
    })()
    this.ended.catch(err => { this.closed ??= err; this.wake?.() })
  }

  /**
   * Fetches `ids` and sends those that checked in groups of `group` blocks, each followed by a flush (the
   * daemon stores a group at its flush: a small group is stored, and its readers woken, soon). Those of
   * `first` go first, in a group of their own; before each other group, `yieldTo` may hold it back.
   * Counts the ones that failed.
   */
  private async fetchAndSend (ids: string[], group: number, first: Set<string> = new Set(), yieldTo?: () => Promise<void>): Promise<void> {
    if (ids.length === 0) return
    const blocks = await this.store.fetchBlocks(ids)
    this.check()
    const good: Array<[string, Buffer]> = []
    for (const [chunk, block] of blocks) {
      if (!(block instanceof VdiskError)) { good.push([chunk, block]); continue }
      if (!this.failed.has(chunk)) this.log(`hydrate: chunk ${chunk}: ${block.message}`)
      this.failed.add(chunk)
    }
    const groups: Array<Array<[string, Buffer]>> = []
    const head = good.filter(([chunk]) => first.has(chunk))
    if (head.length > 0) groups.push(head)
    const rest = good.filter(([chunk]) => !first.has(chunk))
    for (let i = 0; i < rest.length; i += group) groups.push(rest.slice(i, i + group))
    for (const [g, blocks] of groups.entries()) {
      if (g > 0 || head.length === 0) await yieldTo?.()
      await this.sendGroup(blocks)
    }
  }

  /** Sends `blocks` as data frames, then a flush: the daemon stores them and wakes their readers. */
  private async sendGroup (blocks: Array<[string, Buffer]>): Promise<void> {
    for (const [chunk, block] of blocks) {
      await send(this.socket, Buffer.concat([frameHead(frameData, 0, Buffer.from(chunk, 'hex')), block]))
      // Only the recent ones matter (a duplicate costs a fetch, nothing else): the set stays bounded.
      if (this.sentChunks.size >= sentChunksMax) this.sentChunks.clear()
      this.sentChunks.add(chunk)
    }
    await send(this.socket, frameHead(frameFlush, 0, null))
    this.sentThisPass += blocks.length
    this.progress(blocks.length)
  }

  /**
   * While wants are being served, the background walk waits between its groups: a reader's blocks do not
   * queue behind 16 MiB of the walk's in the daemon. Bounded by the wants: each is served or fails (then
   * the session ends: check() throws).
   */
  private async afterWants (): Promise<void> {
    while ((this.urgent.length > 0 || this.servingWants) && !this.stopped) {
      this.check()
      await sleep(10)
    }
  }

  /** Serves the wants until the session stops; a failure there ends the session at the walk's next check. */
  startServingWants (): void {
    this.serving = (async () => {
      while (!this.stopped) {
        this.check()
        if (this.urgent.length === 0) { await new Promise<void>(resolve => { this.wake = resolve }); this.wake = null; continue }
        await this.serveWants(this.urgent.splice(0))
      }
    })()
    this.serving.catch(err => { this.closed ??= err })
  }

  /** Each chunk of `asked` with what follows it in its pack; the store away: asked again after a pause. */
  private async serveWants (asked: string[]): Promise<void> {
    const ids = new Set<string>()
    for (const chunk of asked) {
      ids.add(chunk)
      // What this session sent already is on its way to the daemon: not fetched again as a prefetch.
      for (const next of this.store.following(chunk, pullRangeBytesMax, this.byName)) if (!this.sentChunks.has(next)) ids.add(next)
    }
    this.servingWants = true
    try {
      await this.fetchAndSend([...ids], wantGroupBlocks, new Set(asked))
    } catch (err) {
      // The store away (or slow): the readers wait (bounded by the daemon), and the wants are asked again.
      this.check()
      if (!transient(err)) throw err
      this.log(`hydrate: fetching what a reader waits for: ${(err as Error).message}; trying again in ${retryDelayMs / 1000} s`)
      this.urgent.push(...asked)
      this.servingWants = false
      await sleep(retryDelayMs)
    } finally { this.servingWants = false }
  }

  /**
   * The background walk: the chunks of `order` from `from`, pullBatchBlocks at a time, asking the daemon
   * which are still missing and sending those. 'done' when the daemon says the pull is over.
   */
  async walk (order: string[], from: number, at: (cursor: number) => void): Promise<'done' | { missingSeen: number }> {
    let missingSeen = 0
    for (let start = from; start < order.length; start += pullBatchBlocks) {
      this.check()
      const hashes = order.slice(start, start + pullBatchBlocks)
      const answer = await call(this.mountpoint, 'lazyMissing', { uuid: this.uuid, hashes }) as { inProgress: boolean, missing: string[] }
      if (!answer.inProgress) return 'done'
      missingSeen += answer.missing.length
      // Chunks the wants sent in this session are on their way: a later pass finds any the daemon lacks.
      await this.fetchAndSend(answer.missing.filter(chunk => !this.sentChunks.has(chunk)), walkGroupBlocks, new Set(), async () => await this.afterWants())
      at(start + pullBatchBlocks)
      await testPause('hydrate-batch')
    }
    return { missingSeen }
  }

  /** The walk is over: the wants served to the end, the end frame, and what the pool still lacks. */
  async finish (missingSeen: number): Promise<Outcome> {
    // Wants may still come (a chunk sent to a daemon that did not store it) until the end.
    this.stopped = true
    this.wake?.()
    await this.serving
    this.check()
    await send(this.socket, frameHead(frameEnd, 0, null))
    await this.ended
    const left = (await lazyPulls(this.mountpoint)).find(p => p.uuid === this.uuid)
    if (left === undefined) return 'done'
    if (this.sentThisPass > 0) return 'again'
    if (this.failed.size > 0) return 'stuck'
    throw new VdiskError('CORRUPT', `the pool lists ${left.missing} chunks missing for ${left.backup} that the remote backup does not name (${missingSeen} asked for)`)
  }

  async close (): Promise<void> {
    this.stopped = true
    this.wake?.()
    this.socket.destroy()
    await this.serving.catch(() => {})
  }
}
