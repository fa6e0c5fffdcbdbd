/**
 * Issue #20's fast path against the engine's model: random sequences of the engine model's operations
 * (writes, truncates, discards, backups, clones, restores, rm, rename, commits, seals, gc, reopen), with
 * the reads the engine serves teaching FastReads (fast-reads.ts) what to publish after every step, and
 * after every step every READ the addon would answer itself compared with the model. The addon is
 * played here by FakeAddon, which follows native/fuse3/vdiskfs_fuse3.c's fast_read step for step (the
 * words, the runs of slots, its own descriptors, the checksum check). A word left behind by any engine
 * change that moves a block (a missing BlockMap.watch call, an extent dropped too late) makes a read
 * here return what the block no longer holds, and the property fails.
 */
import test from 'ava'
import fc from 'fast-check'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import { decompress } from 'zstd-napi'
import { blake3Hex } from '../../src/remote/remote-format'
import { encodeBase } from '../../src/format/extent-format'
import { FastReadNative, FastReads } from '../../src/fuse/fast-reads'
import { Pool } from '../../src/volume/pool'
import { Harness, Op, opArbitrary, partialOpArbitrary } from '../helpers/model'

const sector = 4096
const session = {}

/** The addon's fast path (vdiskfs_fuse3.c, "the fast path"), in JavaScript. */
class FakeAddon implements FastReadNative {
  blockBytes = 0
  served = 0
  readonly volumes = new Map<number, { size: number, words: Map<number, bigint> }>()
  readonly extents = new Map<number, { fd: number, dataStart: number, sumsStart: number, dirty: boolean, seq: number, lastWriteMs: number }>()
  writesOn = false
  written = 0
  readonly packs = new Map<number, number>()
  readonly chunks = new Map<number, { pack: number, offset: number, stored: number, raw: number, compressed: boolean, hash: string }>()
  chunkReads = 0
  /** Native WRITEs of more than one block. */
  spanned = 0
  readonly volumeWrites = new Map<number, number>()
  /** fast_write's first writes: leases by inode, the queue, its count, and how many blocks took a new slot. */
  readonly leases = new Map<number, { id: number, next: number, end: number, grow: number, bases: number }>()
  /** First writes past the end (the volume grew natively). */
  grew = 0
  /** First writes of part of a sealed chunk (partial slots over it), and READs of partial slots answered. */
  partials = 0
  partialReads = 0
  queue: number[] = []
  readonly allocCount = new Uint32Array(1)
  allocated = 0

  fastConfigure (_s: object, blockBytes: number): void { this.blockBytes = blockBytes }
  fastSize (_s: object, ino: number, size: number): void {
    const v = this.volumes.get(ino)
    if (v === undefined) this.volumes.set(ino, { size, words: new Map() })
    else v.size = size
  }

  fastPublish (_s: object, ino: number, first: number, words: Uint32Array): boolean {
    const v = this.volumes.get(ino)
    if (v === undefined) return false
    for (let i = 0; i + 1 < words.length; i += 2) {
      const word = BigInt(words[i]) | (BigInt(words[i + 1]) << 32n)
      // A word a first write set stays until the engine's map took its slot (its set clears it).
      if (((v.words.get(first + i / 2) ?? 0n) & 0x40n) !== 0n) continue
      if (word === 0n) v.words.delete(first + i / 2)
      else v.words.set(first + i / 2, word)
    }
    return true
  }

  fastClear (_s: object, ino: number, block: number, count: number): void {
    const v = this.volumes.get(ino)
    if (v === undefined) return
    if (count === 1) { v.words.delete(block); return }
    for (const b of [...v.words.keys()]) if (b >= block && (count < 0 || b < block + count)) v.words.delete(b)
  }

  fastDrop (_s: object, ino: number): void { this.volumes.delete(ino) }

  fastExtent (_s: object, id: number, fd: number, dataStart: number, sumsStart: number): boolean {
    if (this.extents.has(id)) return true
    // A descriptor of its own, as the addon's dup: the engine may close its own meanwhile.
    this.extents.set(id, { fd: fs.openSync(`/proc/self/fd/${fd}`, 'r+'), dataStart, sumsStart, dirty: false, seq: 0, lastWriteMs: 0 })
    return true
  }

  fastExtentDrop (_s: object, id: number): void {
    const e = this.extents.get(id)
    if (e === undefined) return
    fs.closeSync(e.fd)
    this.extents.delete(id)
  }

  fastWrites (_s: object, on: number): void { this.writesOn = on !== 0 }
  fastFreeze (_s: object, ino: number, block: number, count: number): void {
    const v = this.volumes.get(ino)
    if (v === undefined) return
    for (const [b, word] of v.words) {
      if (!(b >= block && (count < 0 || b < block + count))) continue
      if ((word & 0x1fn) === 3n) v.words.set(b, (word & ~0x9fn) | 1n)
      else if ((word & 0x80n) !== 0n) v.words.set(b, word & ~0x80n)
    }
  }

  // One thread, whose WRITEs end before the engine runs again: never inside one when asked.
  fastOdd (_s: object): Float64Array { return new Float64Array(0) }
  fastMoved (_s: object, _odd: Float64Array): boolean { return true }
  fastExtentSeq (_s: object, id: number): number { return this.extents.get(id)?.seq ?? -1 }
  fastExtentLastWrite (_s: object, id: number): number { return this.extents.get(id)?.lastWriteMs ?? 0 }
  fastTakeDirty (_s: object, take: number): number[] {
    const ids = [...this.extents].filter(([, e]) => e.dirty).map(([id]) => id)
    if (take !== 0) for (const id of ids) (this.extents.get(id) as { dirty: boolean }).dirty = false
    return ids
  }

  // Writeback changes nothing anyone reads: nothing to model.
  fastWriteback (_s: object, _bytes: number): number { return 0 }

  fastVolumeWrites (_s: object, ino: number): number { return this.volumeWrites.get(ino) ?? 0 }

  fastLease (_s: object, ino: number, id: number, first: number, end: number, bases: number, _volumeId: number): boolean {
    if (!this.volumes.has(ino)) return false
    this.leases.set(ino, { id, next: first, end, grow: 0, bases })
    return true
  }

  fastLeaseTake (_s: object, ino: number, id: number): number {
    const lease = this.leases.get(ino)
    if (lease === undefined || lease.id !== id || lease.next >= lease.end) return -1
    return lease.next++
  }

  fastGrow (_s: object, ino: number, bytes: number): void {
    const lease = this.leases.get(ino)
    if (lease !== undefined) lease.grow = bytes
  }

  fastLeaseEnd (_s: object, ino: number): Float64Array {
    const lease = this.leases.get(ino)
    this.leases.delete(ino)
    return Float64Array.from(lease === undefined ? [0, 0, 0] : [lease.id, lease.next, lease.end])
  }

  fastAllocs (_s: object, _journalFd: number): Float64Array {
    const taken = Float64Array.from(this.queue)
    this.queue = []
    return taken
  }

  fastAllocCount (_s: object): Uint32Array { return this.allocCount }

  fastPack (_s: object, id: number, file: string): boolean {
    if (this.packs.has(id)) return true
    try { this.packs.set(id, fs.openSync(file, 'r')) } catch { return false }
    return true
  }

  fastPackDrop (_s: object, id: number): void {
    const fd = this.packs.get(id)
    if (fd === undefined) return
    fs.closeSync(fd)
    this.packs.delete(id)
  }

  fastChunk (_s: object, id: number, pack: number, offset: number, stored: number, raw: number, compressed: boolean, hash: Buffer): boolean {
    this.chunks.set(id, { pack, offset, stored, raw, compressed, hash: hash.toString('hex') })
    return true
  }

  fastChunkDrop (_s: object, id: number): void { this.chunks.delete(id) }

  /** fast_read_chunk: the payload from its pack, decompressed, its BLAKE3 checked. */
  private readChunk (id: number, offset: number, count: number, target: Buffer): boolean {
    const c = this.chunks.get(id)
    if (c === undefined || offset + count > c.raw) return false
    const fd = this.packs.get(c.pack)
    if (fd === undefined) return false
    const payload = Buffer.alloc(c.stored)
    if (fs.readSync(fd, payload, 0, c.stored, c.offset) !== c.stored) return false
    let block: Buffer
    try { block = c.compressed ? decompress(payload) : payload } catch { return false }
    if (block.length !== c.raw || blake3Hex(block) !== c.hash) return false
    this.chunkReads++
    block.copy(target, 0, offset, offset + count)
    return true
  }

  /** fast_write: whether the addon overwrote `data` at `offset` itself (false: it hands the WRITE to the engine). */
  write (ino: number, offset: number, data: Buffer): boolean {
    const v = this.volumes.get(ino)
    const bb = this.blockBytes
    if (!this.writesOn || v === undefined || bb === 0 || data.length === 0 || data.length % sector !== 0 || offset % sector !== 0) return false
    // Past the end: only first writes, within what the lease lets the volume grow to.
    const growsTo = offset + data.length > v.size ? offset + data.length : 0
    // Every block it covers must be writable, or open to a first write and written whole (or a part of
    // a hole); none a whole block of zeros, nor zeros into a hole.
    type Piece = { e: { fd: number, dataStart: number, sumsStart: number, dirty: boolean, seq: number, lastWriteMs: number }, slot: number, within: number, data: Buffer, block: number, loaded: bigint, fresh: boolean, base: number }
    const pieces: Piece[] = []
    let fresh = 0
    let overChunks = 0
    for (let done = 0; done < data.length;) {
      const block = Math.floor((offset + done) / bb)
      const within = (offset + done) % bb
      const piece = data.subarray(done, done + Math.min(bb - within, data.length - done))
      const word = v.words.get(block) ?? 0n
      const kind = word & 0x1fn
      if ((piece.length === bb || kind === 2n) && piece.every(b => b === 0)) return false
      if (kind === 3n) {
        const e = this.extents.get(Number(word >> 32n))
        if (e === undefined) return false
        pieces.push({ e, slot: Number((word >> 8n) & 0xffffffn), within, data: piece, block, loaded: word, fresh: false, base: 0 })
      } else if ((word & 0x80n) !== 0n && (piece.length === bb || kind === 2n)) {
        pieces.push({ e: undefined as unknown as Piece['e'], slot: -1, within, data: piece, block, loaded: word, fresh: true, base: 0 })
        fresh++
      } else if ((word & 0x80n) !== 0n && (kind === 4n || kind === 5n)) {
        // Part of a sealed chunk: a partial slot over it (its map entry as the base).
        pieces.push({ e: undefined as unknown as Piece['e'], slot: -1, within, data: piece, block, loaded: word, fresh: true, base: 2 * 2 ** 48 + Number(word >> 32n) })
        fresh++
        overChunks++
      } else return false
      done += piece.length
    }
    if (growsTo !== 0 && fresh === 0) return false
    if (fresh > 0) {
      // New slots from the volume's lease, consecutive.
      const lease = this.leases.get(ino)
      if (lease === undefined || lease.end - lease.next < fresh || growsTo > lease.grow || (overChunks > 0 && lease.bases === 0)) return false
      const e = this.extents.get(lease.id)
      if (e === undefined) return false
      for (const piece of pieces) if (piece.fresh) { piece.e = e; piece.slot = lease.next++ }
    }
    for (const { e, slot, within, data: piece, fresh: first, base } of pieces) {
      // Over a chunk: the slot's base entry, with the data.
      if (base !== 0) fs.writeSync(e.fd, encodeBase([...this.extents].find(([, x]) => x === e)?.[0] as number, slot, base), 0, 16, (this.leases.get(ino)?.bases ?? 0) + slot * 16)
      // A part of a fresh slot: every sector's entry, 0 for those not written (they read as zeros).
      const whole = first && piece.length !== bb
      const sums = Buffer.alloc((whole ? bb : piece.length) / sector * 4)
      for (let k = 0; k < piece.length / sector; k++) {
        const sum = crc32(piece.subarray(k * sector, (k + 1) * sector)) >>> 0
        sums.writeUInt32LE(sum === 0 ? 0xffffffff : sum, (k + (whole ? within / sector : 0)) * 4)
      }
      e.seq++
      fs.writeSync(e.fd, piece, 0, piece.length, e.dataStart + slot * bb + within)
      fs.writeSync(e.fd, sums, 0, sums.length, e.sumsStart + (slot * (bb / sector) + (whole ? 0 : within / sector)) * 4)
      e.dirty = true
      e.lastWriteMs = Date.now()
      e.seq++
    }
    if (growsTo !== 0) {
      // The new size, before the reply; queued before the blocks past the old end (extent 0: a size).
      v.size = Math.max(v.size, growsTo)
      this.queue.push(ino, growsTo, 0, 0, 0)
      this.allocCount[0]++
      this.grew++
    }
    for (const piece of pieces) {
      if (!piece.fresh) continue
      // The word set only if it is still the one loaded (FAST_NATIVE | FAST_WRITABLE); queued for the
      // engine's map before the reply.
      const id = [...this.extents].find(([, e]) => e === piece.e)?.[0] as number
      if ((v.words.get(piece.block) ?? 0n) === piece.loaded) v.words.set(piece.block, (BigInt(id) << 32n) | (BigInt(piece.slot) << 8n) | 0x43n | (piece.base !== 0 ? 0x20n : 0n))
      else v.words.delete(piece.block)
      this.queue.push(ino, piece.block, id, piece.slot, piece.base)
      if (piece.base !== 0) this.partials++
      this.allocCount[0]++
      this.allocated++
    }
    this.volumeWrites.set(ino, (this.volumeWrites.get(ino) ?? 0) + 1)
    this.written++
    if (pieces.length > 1) this.spanned++
    return true
  }

  close (): void {
    for (const e of this.extents.values()) fs.closeSync(e.fd)
    this.extents.clear()
    for (const fd of this.packs.values()) fs.closeSync(fd)
    this.packs.clear()
  }

  /** fast_read: the bytes the addon would answer, or null when it hands the READ to the engine. */
  read (ino: number, offset: number, size: number): Buffer | null {
    const v = this.volumes.get(ino)
    const bb = this.blockBytes
    if (v === undefined || offset >= v.size || size === 0) return null
    const length = Math.min(size, v.size - offset)
    const out = Buffer.alloc(length)
    let done = 0
    while (done < length) {
      const at = offset + done
      const block = Math.floor(at / bb)
      const within = at % bb
      const count = Math.min(bb - within, length - done)
      const word = v.words.get(block) ?? 0n
      const kind = Number(word & 0x1fn)
      if (kind === 2) { out.fill(0, done, done + count); done += count; continue }
      if (kind === 4) {
        if (!this.readChunk(Number(word >> 32n), within, count, out.subarray(done, done + count))) return null
        done += count
        continue
      }
      if (kind !== 1 && kind !== 3) return null
      const id = Number(word >> 32n)
      const slot = Number((word >> 8n) & 0xffffffn)
      let run = count
      while (done + run < length) {
        const next = v.words.get(block + Math.floor((run + within) / bb)) ?? 0n
        if ((next & 0x20n) !== 0n || (word & 0x20n) !== 0n || ((next & 0x1fn) !== 1n && (next & 0x1fn) !== 3n) || Number(next >> 32n) !== id || Number((next >> 8n) & 0xffffffn) !== slot + Math.floor((run + within) / bb)) break
        run += Math.min(bb, length - done - run)
      }
      if (!this.readRun(id, slot, within, run, out.subarray(done, done + run), (word & 0x20n) !== 0n)) return null
      if ((word & 0x20n) !== 0n) this.partialReads++
      done += run
    }
    this.served++
    return out
  }

  private readRun (id: number, slot: number, offset: number, count: number, target: Buffer, partial: boolean): boolean {
    const e = this.extents.get(id)
    if (e === undefined) return false
    const first = Math.floor(offset / sector)
    const last = Math.floor((offset + count - 1) / sector)
    const sectors = last - first + 1
    const bytes = Buffer.alloc(sectors * sector)
    fs.readSync(e.fd, bytes, 0, bytes.length, e.dataStart + slot * this.blockBytes + first * sector)
    const sums = Buffer.alloc(sectors * 4)
    fs.readSync(e.fd, sums, 0, sums.length, e.sumsStart + (slot * (this.blockBytes / sector) + first) * 4)
    for (let k = 0; k < sectors; k++) {
      const piece = bytes.subarray(k * sector, (k + 1) * sector)
      const entry = sums.readUInt32LE(k * 4)
      // A partial slot's unwritten sector is the chunk's: the engine reads it.
      if (entry === 0 && partial) return false
      if (entry === 0) { if (piece.some(b => b !== 0)) return false; continue }
      const sum = crc32(piece) >>> 0
      if ((sum === 0 ? 0xffffffff : sum) !== entry) return false
    }
    bytes.copy(target, 0, offset - first * sector, offset - first * sector + count)
    return true
  }
}

/** A deterministic stream of numbers from `seed` (which reads the engine serves, which the addon is asked). */
function numbers (seed: number): () => number {
  let x = seed >>> 0 || 1
  return () => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x }
}

async function runWithFastReads (ops: Op[], blockBytes: number, seed: number): Promise<{ problem: string | null, served: number, written: number, chunks: number, spanned: number, allocated: number, grew: number, partials: number, partialReads: number }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-fastmodel-'))
  const open = (create: boolean): Pool => Pool.open(path.join(dir, 'pool'), { create, blockBytes, workers: 1 })
  let addon = new FakeAddon()
  let served = 0
  let written = 0
  let chunks = 0
  let spanned = 0
  let allocated = 0
  let grew = 0
  let partials = 0
  let partialReads = 0
  const attach = (pool: Pool): FastReads => {
    const fast = new FastReads(pool.fastReadSource(), v => v.id + 16)
    fast.attach(addon, session)
    return fast
  }
  const harness = new Harness(open(true), async () => {
    await harness.pool.close()
    return open(false)
  })
  let pool = harness.pool
  let fast = attach(pool)
  const next = numbers(seed)
  try {
    await harness.apply({ op: 'create' })
    for (const op of [...ops, { op: 'reopen' } as Op]) {
      await harness.apply(op)
      if (harness.pool !== pool) {
        served += addon.served
        written += addon.written
        chunks += addon.chunkReads
        spanned += addon.spanned
        allocated += addon.allocated
        grew += addon.grew
        partials += addon.partials
        partialReads += addon.partialReads
        addon.close()
        addon = new FakeAddon()
        pool = harness.pool
        fast = attach(pool)
      }
      // WRITEs the addon would overwrite itself (whole sectors within a block), with the words as the
      // operation left them: the model follows them. A word left writable on a slot the volume no
      // longer owns alone (a backup's, sealing's) changes what another volume reads, checked below.
      const touched = new Set<number>()
      for (const v of harness.model.values()) {
        const ino = pool.get(v.kind, v.name).id + 16
        // Sometimes an append (a first write past the end, which grows the volume natively).
        if (v.kind !== 'backup' && next() % 3 === 0) {
          const at = Math.ceil(v.data.length / sector) * sector
          const more = Buffer.alloc(sector * (1 + next() % 4), 1 + next() % 255)
          more.writeUInt32LE(next(), 0)
          if (addon.write(ino, at, more)) {
            v.data = Buffer.concat([v.data, Buffer.alloc(at - v.data.length), more])
            for (let b = Math.floor(at / blockBytes); b <= Math.floor((at + more.length - 1) / blockBytes); b++) touched.add(b)
          }
        }
        for (let i = 0; i < 4 && v.kind !== 'backup' && v.data.length >= sector; i++) {
          // Half of them at a block the addon may overwrite, if any (most blocks of a sparse volume are holes).
          const writable = [...addon.volumes.get(ino)?.words ?? []].filter(([, word]) => (word & 0x1fn) === 3n).map(([b]) => b)
          // And some across two writable blocks in a row (a native WRITE of several blocks).
          const writableSet = new Set(writable)
          // i 2: two writable blocks in a row; i 3: a writable block before one the addon may only read
          // (shared with a backup: the WRITE must go to the engine whole).
          const words = addon.volumes.get(ino)?.words
          const pairs = i === 2
            ? writable.filter(b => writableSet.has(b + 1))
            : writable.filter(b => words !== undefined && ((words.get(b + 1) ?? 0n) & 0x1fn) === 1n)
          const span = pairs.length > 0 && i >= 2
          // i 1: a block open to a first write (a hole, a sealed or a shared block), written whole.
          const open = i === 1 ? [...addon.volumes.get(ino)?.words ?? []].filter(([, word]) => (word & 0x80n) !== 0n).map(([b]) => b) : []
          const offset = span
            ? pairs[next() % pairs.length] * blockBytes + sector * (next() % (blockBytes / sector))
            : open.length > 0
              ? open[next() % open.length] * blockBytes + sector * (next() % 2 === 0 ? 0 : next() % (blockBytes / sector))
              : writable.length > 0 && i % 2 === 0
              ? writable[next() % writable.length] * blockBytes + sector * (next() % (blockBytes / sector))
              : (next() % Math.floor(v.data.length / sector)) * sector
          if (offset + sector > v.data.length) continue
          const room = Math.min(blockBytes - offset % blockBytes + (span ? blockBytes : (next() % 2) * 2 * blockBytes), v.data.length - offset)
          const length = open.length > 0 ? Math.min(room, next() % 2 === 0 ? blockBytes * (1 + next() % 2) : sector * (1 + next() % (2 * blockBytes / sector))) : span ? room : sector * (1 + next() % Math.max(1, Math.floor(room / sector)))
          if (length > room) continue
          const data = Buffer.alloc(length, 1 + next() % 255)
          data.writeUInt32LE(next(), 0)
          if (addon.write(ino, offset, data)) {
            data.copy(v.data, offset)
            for (let b = Math.floor(offset / blockBytes); b <= Math.floor((offset + length - 1) / blockBytes); b++) touched.add(b)
          }
        }
      }
      // Every backup, through the engine, at the blocks the addon just wrote (slots are shared at the
      // same block by a backup, its source and its clones): nothing written since may show in them.
      for (const v of harness.model.values()) {
        if (v.kind !== 'backup') continue
        for (const block of touched) {
          const offset = block * blockBytes
          if (offset >= v.data.length) continue
          const got = Buffer.alloc(Math.min(blockBytes, v.data.length - offset))
          await pool.get(v.kind, v.name).read(got, offset)
          if (!got.equals(v.data.subarray(offset, offset + got.length))) return { problem: `after ${JSON.stringify(op)}: backup ${v.name} block ${block} no longer holds what it did when it was made`, served, written, chunks, spanned, allocated, grew, partials, partialReads }
        }
      }
      for (const v of harness.model.values()) {
        const volume = pool.get(v.kind, v.name)
        const ino = volume.id + 16
        // What the addon would answer now, against the model.
        for (let i = 0; i < 12; i++) {
          const size = 1 + next() % (3 * blockBytes)
          const offset = i < 4 ? next() % Math.max(1, v.data.length) : (next() % Math.max(1, Math.ceil(v.data.length / blockBytes))) * blockBytes
          const got = addon.read(ino, offset, size)
          if (got === null) continue
          const want = v.data.subarray(offset, Math.min(v.data.length, offset + size))
          if (!got.equals(want)) return { problem: `after ${JSON.stringify(op)}: ${v.kind} ${v.name}: the addon answered ${size} bytes at ${offset} with bytes the volume does not hold`, served, written, chunks, spanned, allocated, grew, partials, partialReads }
        }
        // Reads the engine serves (and the publishing that follows each), against the model too: native
        // WRITEs change slots and checksum entries behind the engine.
        for (let i = 0; i < 3 && v.data.length > 0; i++) {
          const offset = next() % v.data.length
          const target = Buffer.alloc(Math.min(v.data.length - offset, 1 + next() % (2 * blockBytes)))
          const count = await volume.read(target, offset)
          if (!target.subarray(0, count).equals(v.data.subarray(offset, offset + count))) return { problem: `after ${JSON.stringify(op)}: ${v.kind} ${v.name}: the engine read ${count} bytes at ${offset} that the volume does not hold`, served, written, chunks, spanned, allocated, grew, partials, partialReads }
          fast.learn(volume, offset, count)
        }
        // Half the time the whole volume is published (as reads all over it would).
        if (v.kind !== 'backup' && next() % 2 === 0) fast.learn(volume, 0, volume.size)
      }
    }
    return { problem: null, served: served + addon.served, written: written + addon.written, chunks: chunks + addon.chunkReads, spanned: spanned + addon.spanned, allocated: allocated + addon.allocated, grew: grew + addon.grew, partials: partials + addon.partials, partialReads: partialReads + addon.partialReads }
  } finally {
    addon.close()
    await harness.pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

test('every READ the addon would answer holds what the engine holds, through random operation sequences', async t => {
  // make fuzz-long runs 1,000.
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 20)
  let served = 0
  let written = 0
  let chunks = 0
  let spanned = 0
  let allocated = 0
  let grew = 0
  await fc.assert(fc.asyncProperty(fc.array(opArbitrary, { minLength: 1, maxLength: 30 }), fc.nat(), async (ops, seed) => {
    const result = await runWithFastReads(ops, 4096, seed)
    served += result.served
    written += result.written
    chunks += result.chunks
    spanned += result.spanned
    allocated += result.allocated
    grew += result.grew
    if (result.problem !== null) throw new Error(result.problem)
  }), { numRuns: runs, verbose: 1 })
  t.true(served > 0, 'the addon answered reads')
  t.true(written > 0, 'the addon wrote')
  t.true(spanned > 0, 'the addon wrote several blocks in one WRITE')
  t.true(allocated > 0, 'the addon gave blocks new slots (first writes)')
  t.true(grew > 0, 'the addon grew volumes (first writes past the end)')
  t.log(`${runs} sequences; the addon answered ${served} reads (${chunks} pieces of sealed chunks), each equal to the model, and wrote ${written} times (${spanned} of them more than one block; ${allocated} blocks took a new slot; ${grew} writes grew a volume)`)
})

test('the same with 16 KiB blocks (partial slots over sealed blocks: made and written by the addon, read by it where written; whole sealed blocks it reads)', async t => {
  // Fewer by default (make test's time); make fuzz-long runs 1,000 of each.
  const runs = Number(process.env.VDISKFS_FUZZ_RUNS ?? 15)
  let served = 0
  let written = 0
  let chunks = 0
  let spanned = 0
  let partials = 0
  let partialReads = 0
  await fc.assert(fc.asyncProperty(fc.array(partialOpArbitrary, { minLength: 1, maxLength: 30 }), fc.nat(), async (ops, seed) => {
    const result = await runWithFastReads([{ op: 'write', vol: 0, offset: 0, length: 64 * 4096, zero: false, seed: 1 }, { op: 'seal' }, ...ops], 16384, seed)
    served += result.served
    written += result.written
    chunks += result.chunks
    spanned += result.spanned
    partials += result.partials
    partialReads += result.partialReads
    if (result.problem !== null) throw new Error(result.problem)
  }), { numRuns: runs, verbose: 1 })
  t.true(served > 0, 'the addon answered reads')
  t.true(written > 0, 'the addon overwrote slots')
  t.true(chunks > 0, 'the addon read sealed chunks')
  t.true(partials > 0, 'the addon made partial slots over sealed chunks')
  t.log(`${runs} sequences; the addon answered ${served} reads (${chunks} pieces of sealed chunks, ${partialReads} of partial slots), each equal to the model, and wrote ${written} times (${spanned} of them more than one block; ${partials} partial slots over chunks made)`)
})

test('a WRITE across a block the volume owns and one it shares with a backup: the shared one gets a new slot, the backup keeps its bytes', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-fastspan-'))
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes: sector, workers: 1 })
  const addon = new FakeAddon()
  try {
    const fast = new FastReads(pool.fastReadSource(), v => v.id + 16)
    fast.attach(addon, session)
    const disk = await pool.createDisk('d.img')
    const ino = disk.id + 16
    const first = Buffer.alloc(3 * sector, 'a')
    await disk.write(first, 0)
    const backup = await pool.backup(disk, 'b.img')
    // Blocks 0 and 2 get slots of the disk's own again; block 1 is still the backup's.
    await disk.write(Buffer.alloc(sector, 'b'), 0)
    await disk.write(Buffer.alloc(sector, 'b'), 2 * sector)
    fast.learn(disk, 0, 3 * sector)
    const kinds = [0, 1, 2].map(b => Number((addon.volumes.get(ino)?.words.get(b) ?? 0n) & 0xffn))
    t.deepEqual(kinds, [3, 0x81, 3], 'blocks 0 and 2 writable here, block 1 readable and open to a first write')
    // Blocks 0-1: block 0 overwritten in its slot, block 1 in a new slot of the lease, never the backup's.
    t.true(addon.write(ino, 0, Buffer.alloc(2 * sector, 'c')), 'blocks 0-1: here')
    t.is(addon.allocated, 1, 'block 1 took a new slot')
    const expected = Buffer.concat([Buffer.alloc(2 * sector, 'c'), Buffer.alloc(sector, 'b')])
    const read = Buffer.alloc(3 * sector)
    await disk.read(read, 0)
    t.true(read.equals(expected), 'the engine reads what the addon wrote (the first write taken into its map)')
    t.is(addon.queue.length, 0, 'the engine took the queue')
    const got = Buffer.alloc(3 * sector)
    await backup.read(got, 0)
    t.true(got.equals(first), 'the backup holds what it held')
    // A backup now: the words lose their writable kind and first writes (the lease ends), and the
    // first write's slot is the new backup's too.
    const second = await pool.backup(disk, 'b2.img')
    t.false(addon.write(ino, sector, Buffer.alloc(sector, 'd')), 'after a backup: to the engine')
    const again = Buffer.alloc(3 * sector)
    await second.read(again, 0)
    t.true(again.equals(expected), 'the second backup holds the first write')
    await backup.read(got, 0)
    t.true(got.equals(first), 'the first backup still holds what it held')
  } finally {
    addon.close()
    await pool.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
