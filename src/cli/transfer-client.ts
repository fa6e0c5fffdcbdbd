/**
 * The CLI side of export and import (and what the S3 remote builds on): streams in the export format
 * (stream.ts) to and from the daemon that owns a pool, over the control socket's stream mode and the
 * frames of wire.ts. The stream's encoding and decoding (BLAKE3 ids, zstd, the whole-stream checksum)
 * run here, in the calling process, not in the daemon.
 *
 * Stable signatures (issue #12's contract with the S3 remote):
 *   exportStream(mountpoint, backupKind, name, { since }) -> Readable of the stream's bytes
 *   importStream(mountpoint, name, readable) -> Promise<ImportResult>
 *
 * Errors: the daemon's (NOT_FOUND, EXISTS, INVALID ...) and the decoder's (CORRUPT), as the Readable's
 * 'error' or the Promise's rejection; IO when the daemon goes away.
 */
import net from 'node:net'
import { PassThrough, Readable } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { VolumeKind } from '../catalog/catalog'
import { VdiskError } from '../errors'
import { daemonReasonWaitMs, exportRingBytes, exportRingReadBytes, streamBufferBytes } from '../limits'
import { openStream, openStreamRing, readReply } from '../control/client'
import { ImportFinish, ImportStaged } from '../control/results'
import { StreamBlock, StreamDecoder, StreamEncoder, StreamHeader, StreamItem } from '../transfer/stream'
import { ByteReader, RingSource, frameData, frameEnd, frameHead, frameZero, readFrame, send, zstdFrameHead } from '../transfer/wire'

/** What an import made: the daemon's last reply, and what this side counted. */
export type ImportResult = ImportFinish & {
  /** Blocks the stream carried. */
  blocks: number
  /** Bytes of the stream read. */
  streamBytes: number
}

export interface ExportOptions {
  /** An older backup of the same pool (its name, e.g. b1.img): only the blocks that differ are sent. */
  since?: string
  /** Called with the header once the daemon answered (for progress). */
  onHeader?: (header: StreamHeader) => void
  /** Called after each block with how many were sent. */
  onBlock?: (done: number) => void
}

/**
 * The export stream of backup `name` (a backup's kind is 'backup'), full or since an older backup.
 * Errors surface as the Readable's 'error'.
 */
export function exportStream (mountpoint: string, backupKind: VolumeKind, name: string, options: ExportOptions = {}): Readable {
  const out = new PassThrough({ highWaterMark: streamBufferBytes })
  let socket: net.Socket | null = null
  out.on('close', () => socket?.destroy())
  void (async () => {
    const opened = await openStream(mountpoint, 'exportStream', { kind: backupKind, name, since: options.since ?? null })
    socket = opened.socket
    const header = opened.result
    options.onHeader?.(header)
    const reader = new ByteReader(opened.socket, opened.rest)
    let done = 0
    async function * blocks (): AsyncGenerator<StreamBlock> {
      for (;;) {
        const frame = await readFrame(reader, header.blockBytes)
        if (frame === null) throw new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} closed the connection before the export's end`)
        if (frame.kind === frameEnd) return
        yield { index: frame.index, data: frame.kind === frameData ? frame.data : null, hash: frame.hash }
        options.onBlock?.(++done)
      }
    }
    await pipeline(blocks, new StreamEncoder(header), out)
    opened.socket.destroy()
  })().catch(err => { socket?.destroy(); out.destroy(err as Error) })
  return out
}

/**
 * The export of backup `name` as the daemon sends it: its header and its blocks, not encoded into a stream
 * (a push consumes them in this process: encoding, compressing and decoding them again would only cost
 * CPU). Every block record the header announces comes, then the daemon's end frame; a block whose hash the
 * daemon gave is the caller's to check. The connection closes when `blocks` ends or is returned early.
 */
export async function exportBlocks (mountpoint: string, backupKind: VolumeKind, name: string, options: { since?: string, reuse?: boolean } = {}): Promise<{ header: StreamHeader, blocks: AsyncGenerator<StreamBlock> }> {
  const args = { kind: backupKind, name, since: options.since ?? null }
  // reuse: a block's bytes are valid only until the next block is asked for (no buffer of their own each),
  // and the connection reads into a ring of this reader's own (RingSource: no buffer per read of the socket),
  // whose bytes a frame's views point into until the next frame begins.
  // VDISKFS_PUSH_RING=0: the socket's own buffers, as before (for measuring against).
  const opened = options.reuse === true && process.env.VDISKFS_PUSH_RING !== '0'
    ? await openStreamRing(mountpoint, 'exportStream', args, new RingSource(exportRingBytes, exportRingReadBytes))
    : await (async () => { const o = await openStream(mountpoint, 'exportStream', args); return { ...o, reader: new ByteReader(o.socket, o.rest) } })()
  const header = opened.result
  const reader = opened.reader
  const scratch = options.reuse === true ? Buffer.allocUnsafe(header.blockBytes) : undefined
  async function * blocks (): AsyncGenerator<StreamBlock> {
    try {
      for (let done = 0; ; done++) {
        const frame = await readFrame(reader, header.blockBytes, scratch)
        if (frame === null) throw new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} closed the connection before the export's end`)
        if (frame.kind === frameEnd) {
          if (done !== header.records) throw new VdiskError('CORRUPT', `the export of ${name} ended after ${done} of the ${header.records} blocks its header announced`)
          return
        }
        if (done >= header.records) throw new VdiskError('CORRUPT', `the export of ${name} sent more than the ${header.records} blocks its header announced`)
        yield { index: frame.index, data: frame.kind === frameData ? frame.data : null, hash: frame.hash }
      }
    } finally { opened.socket.destroy() }
  }
  return { header, blocks: blocks() }
}

export interface ImportOptions {
  onHeader?: (header: StreamHeader) => void
  onBlock?: (done: number) => void
  /** The connection the blocks go to, once open (importBlocks): to learn when what was sent is written. */
  onConnection?: (socket: net.Socket) => void
}

/**
 * What the daemon said when an import's connection failed: it says why before it closes (an error
 * reply line, already on its way in `reply`), and that, rather than "the connection closed", is the
 * error to show.
 */
async function daemonsReason (reply: Promise<unknown>, failure: unknown): Promise<unknown> {
  // The timer must hold the process up (not unref'd): with the input paused and the connection gone,
  // nothing else does, and Node would exit with status 0 in the middle of a failed import.
  let timer: NodeJS.Timeout | undefined
  try {
    await Promise.race([reply, new Promise((_resolve, reject) => { timer = setTimeout(() => reject(failure), daemonReasonWaitMs) })])
  } catch (err) {
    if (err instanceof VdiskError && !/closed the connection/.test(err.message)) return err
  } finally {
    clearTimeout(timer)
  }
  return failure
}

/**
 * Imports an export stream as backups/NAME (name as the pool spells it, e.g. web-monday.img). The
 * backup appears only after the whole stream checked; an interrupted import is continued by the next
 * import of the same stream.
 */
export async function importStream (mountpoint: string, name: string, stream: Readable, options: ImportOptions = {}): Promise<ImportResult> {
  return await importVia('importStream', mountpoint, name, stream, options) as ImportResult
}

/**
 * A group import's member (`vdiskfs import --group`): the stream received whole and checked, and staged
 * under its key; no backup appears until importGroupFinish makes the whole group.
 */
export async function importStageStream (mountpoint: string, name: string, stream: Readable, options: ImportOptions = {}): Promise<ImportStaged & { blocks: number, streamBytes: number }> {
  return await importVia('importStageStream', mountpoint, name, stream, options) as ImportStaged & { blocks: number, streamBytes: number }
}

async function importVia (op: 'importStream' | 'importStageStream', mountpoint: string, name: string, stream: Readable, options: ImportOptions): Promise<(ImportFinish | ImportStaged) & { blocks: number, streamBytes: number }> {
  const decoder = new StreamDecoder()
  stream.on('error', err => decoder.destroy(err))
  stream.pipe(decoder)
  try {
    const items = (decoder as AsyncIterable<StreamItem>)[Symbol.asyncIterator]()
    const first = await items.next()
    if (first.done === true) throw new VdiskError('CORRUPT', 'the stream has no header')
    if (first.value.kind !== 'header') throw new VdiskError('CORRUPT', 'a block before the stream header')
    const header = first.value.header
    options.onHeader?.(header)
    async function * blocks (): AsyncGenerator<StreamBlock> {
      for (;;) {
        const next = await items.next()
        // The decoder ended: the trailer's count and checksum matched. Only now may the backup appear.
        if (next.done === true) return
        if (next.value.kind !== 'block') throw new VdiskError('CORRUPT', 'a second stream header')
        yield next.value.block
      }
    }
    const result = await blocksVia(op, mountpoint, name, header, blocks(), options)
    return { ...result, streamBytes: decoder.bytesRead }
  } finally {
    stream.unpipe(decoder)
    if (!stream.destroyed && stream !== process.stdin) stream.destroy()
  }
}

/**
 * Imports `blocks` as backups/NAME: the header, then each block as a frame to the daemon (as
 * exportBlocks takes a backup's), with no export stream encoded and decoded in between (a pull's blocks,
 * each checked against its id already; the daemon hashes every block again before it stores it). The
 * end frame goes only once `blocks` ended without an error, so the backup appears only then; an
 * interrupted import is continued by the next import with the same header. streamBytes: 0.
 */
export async function importBlocks (mountpoint: string, name: string, header: StreamHeader, blocks: AsyncIterable<StreamBlock>, options: ImportOptions = {}): Promise<ImportResult> {
  return await blocksVia('importStream', mountpoint, name, header, blocks, options) as ImportResult
}

/** The frames of an import (importStream) or a group member's staging (importStageStream). */
async function blocksVia (op: 'importStream' | 'importStageStream', mountpoint: string, name: string, header: StreamHeader, blocks: AsyncIterable<StreamBlock>, options: ImportOptions): Promise<(ImportFinish | ImportStaged) & { blocks: number, streamBytes: number }> {
  let socket: net.Socket | null = null
  let done = 0
  try {
    const opened = op === 'importStream' ? await openStream(mountpoint, 'importStream', { name, header }) : await openStream(mountpoint, 'importStageStream', { name, header })
    const connection = opened.socket
    socket = connection
    options.onConnection?.(connection)
    // The daemon's final line, read from the moment the stream starts: it answers only at the end, or
    // early with the reason it stopped (a full pool, a bad frame), and then stops reading the stream.
    const reply: Promise<{ result: ImportFinish | ImportStaged }> = op === 'importStream' ? readReply('importStream', connection, opened.rest, mountpoint) : readReply('importStageStream', connection, opened.rest, mountpoint)
    let replied = false
    reply.then(() => { replied = true }, () => { replied = true })
    const stopped = async (): Promise<VdiskError> => {
      try {
        await reply
      } catch (err) {
        return err instanceof VdiskError ? err : new VdiskError('IO', (err as Error).message)
      }
      return new VdiskError('IO', `the vdiskfs daemon of ${mountpoint} answered before the end of the stream`)
    }
    for await (const { index, data, hash, zstd } of blocks) {
      if (replied) throw await stopped()
      try {
        if (zstd === true) {
          if (data === null || hash == null) throw new VdiskError('INVALID', `block ${index}: a zstd frame needs its bytes and its id`)
          await send(connection, zstdFrameHead(index, hash, data.length))
        } else await send(connection, frameHead(data === null ? frameZero : frameData, index, hash ?? null))
        if (data !== null) await send(connection, data)
      } catch (err) {
        throw await daemonsReason(reply, err)
      }
      options.onBlock?.(++done)
    }
    if (replied) throw await stopped()
    try {
      await send(connection, frameHead(frameEnd, 0, null))
    } catch (err) {
      throw await daemonsReason(reply, err)
    }
    const { result } = await reply
    return { ...result, blocks: done, streamBytes: 0 }
  } finally {
    socket?.destroy()
  }
}
