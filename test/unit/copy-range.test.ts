/**
 * pool.copyRange (copy_file_range within a pool, issue #18): random sequences of writes, range copies
 * (aligned and not, from disks, backups and clones, within one disk), backups, seal passes, gc and
 * reopens, each volume checked byte for byte against a model; whole blocks are shared (the target's map
 * names what the source's does, nothing written); copies and writes in flight at once land whole.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { Volume } from '../../src/volume/volume'
import { verifyPool } from '../../src/inspect/verify'
import { bytesOf } from '../helpers/model'

async function withPool (blockBytes: number, work: (pool: Pool, reopen: () => Promise<Pool>) => Promise<void>): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-copyrange-'))
  let pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    await work(pool, async () => {
      await pool.close()
      // eslint-disable-next-line require-atomic-updates -- the test's own pool: closed above, reopened in sequence
      pool = Pool.open(path.join(dir, 'pool'), { workers: 1 })
      return pool
    })
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

/** A small deterministic generator (the test's seed is logged). */
function rng (seed: number): (n: number) => number {
  let x = seed >>> 0 || 1
  return n => { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; return x % n }
}

async function contentOf (volume: Volume): Promise<Buffer> {
  const out = Buffer.alloc(volume.size)
  await volume.read(out, 0)
  return out
}

/** Writes `data` at `offset` into a model buffer, growing it as a write grows a volume. */
function modelWrite (model: Buffer, data: Buffer, offset: number): Buffer {
  const grown = offset + data.length > model.length ? Buffer.concat([model, Buffer.alloc(offset + data.length - model.length)]) : model
  data.copy(grown, offset)
  return grown
}

for (const blockBytes of [4096, 16384]) {
  test(`copy ranges match the model: writes, copies, backups, seals, gc and reopen (${blockBytes / 1024} KiB blocks)`, async t => {
    const seed = Number(process.env.VDISKFS_COPYRANGE_SEED ?? Date.now() % 1000000)
    t.log(`seed ${seed} (VDISKFS_COPYRANGE_SEED replays it)`)
    const random = rng(seed)
    await withPool(blockBytes, async (pool, reopen) => {
      const names = ['a.img', 'b.img', 'c.img']
      const model = new Map<string, Buffer>()
      for (const name of names) { await pool.createDisk(name); model.set(name, Buffer.alloc(0)) }
      const backups: string[] = []
      const span = 48 * blockBytes
      let sharedSeen = 0
      const disk = (name: string): Volume => pool.get('disk', name)
      const volumeOf = (key: string): Volume => key.startsWith('backup:') ? pool.get('backup', key.slice(7)) : disk(key)
      for (let step = 0; step < 120; step++) {
        const choice = random(10)
        if (choice < 3) {
          const name = names[random(names.length)]
          const offset = random(span)
          const data = bytesOf(seed * 1000 + step, 1 + random(6 * blockBytes))
          await disk(name).write(data, offset)
          model.set(name, modelWrite(model.get(name)!, data, offset))
        } else if (choice < 7) {
          // Mostly block-aligned on both sides (shared), sometimes at one offset within a block on both
          // (shared middle, copied ends), sometimes at different ones (copied).
          const sources = [...names, ...backups.map(b => `backup:${b}`)]
          const from = sources[random(sources.length)]
          const to = names[random(names.length)]
          const fromData = model.get(from)!
          const kind = random(3)
          const within = kind === 0 ? 0 : random(blockBytes)
          let src = random(24) * blockBytes + within
          let dst = random(24) * blockBytes + (kind === 2 ? random(blockBytes) : within)
          let length = random(16 * blockBytes)
          if (from === to) {
            // Not overlapping, as the kernel requires within one file.
            if (src < dst + length && dst < src + length) { src = 0; dst = 24 * blockBytes + within; length = Math.min(length, dst - src) }
          }
          const result = await pool.copyRange(volumeOf(from), disk(to), src, dst, length)
          const expected = Math.max(0, Math.min(length, fromData.length - src))
          t.is(result.bytes, expected, `step ${step}: copy of ${length} bytes from ${from}@${src} to ${to}@${dst}`)
          if (result.bytes > 0) model.set(to, modelWrite(model.get(to)!, Buffer.from(fromData.subarray(src, src + result.bytes)), dst))
          if (result.sharedBytes > 0) {
            sharedSeen++
            const head = (blockBytes - src % blockBytes) % blockBytes
            const first = (src + head) / blockBytes
            const target = (dst + head) / blockBytes
            for (let i = 0; i < result.sharedBytes / blockBytes; i++) {
              t.is(disk(to).map.get(target + i), volumeOf(from).map.get(first + i), `step ${step}: block ${target + i} of ${to} names what block ${first + i} of ${from} names`)
            }
          }
        } else if (choice === 7) {
          const name = names[random(names.length)]
          const backup = `s${step}.img`
          await pool.backup(disk(name), backup)
          backups.push(backup)
          model.set(`backup:${backup}`, Buffer.from(model.get(name)!))
        } else if (choice === 8) {
          await new Sealer(pool, () => {}).sealPending(true)
          if (random(2) === 0) await pool.gc(0.99)
        } else {
          await pool.commit()
          // eslint-disable-next-line require-atomic-updates -- the steps run one at a time: nothing else uses the pool during the reopen
          if (random(3) === 0) pool = await reopen()
        }
        if (step % 20 === 19 || step === 119) {
          for (const [key, data] of model) t.true((await contentOf(volumeOf(key))).equals(data), `step ${step}: ${key} matches the model`)
        }
      }
      t.true(sharedSeen > 0, 'some copies shared blocks')
      await new Sealer(pool, () => {}).sealPending(true)
      await pool.gc(0.99)
      // eslint-disable-next-line require-atomic-updates -- as above: the sequence is over, nothing else uses the pool
      pool = await reopen()
      for (const [key, data] of model) t.true((await contentOf(volumeOf(key))).equals(data), `after seal, gc and reopen: ${key}`)
      t.true((await verifyPool(pool)).ok, 'verify is clean')
    })
  })
}

test('a shared range stays the target\'s when the source is overwritten in place afterwards, and the reverse', async t => {
  await withPool(4096, async pool => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    const old = bytesOf(1, 64 * 4096)
    await a.write(old, 0)
    const result = await pool.copyRange(a, b, 0, 0, old.length)
    t.deepEqual(result, { bytes: old.length, sharedBytes: old.length })
    // a's blocks were in its writable extent: the copy froze it, so these writes go to new slots.
    await a.write(bytesOf(2, 8 * 4096), 4 * 4096)
    await b.write(bytesOf(3, 8 * 4096), 40 * 4096)
    t.true((await contentOf(b)).subarray(0, 40 * 4096).equals(old.subarray(0, 40 * 4096)), 'b keeps what it copied where it did not write')
    const got = await contentOf(a)
    t.true(got.subarray(40 * 4096).equals(old.subarray(40 * 4096)), 'a keeps its bytes where b wrote')
  })
})

test('a copy with writes in flight on both sides lands whole: each block of the target is the source\'s before or after the write', async t => {
  await withPool(4096, async pool => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    const before = bytesOf(1, 32 * 4096)
    const after = bytesOf(2, 32 * 4096)
    await a.write(before, 0)
    await b.write(bytesOf(3, 32 * 4096), 0)
    const targetWrite = bytesOf(4, 32 * 4096)
    const [, copied] = await Promise.all([a.write(after, 0), pool.copyRange(a, b, 0, 0, 32 * 4096), b.write(targetWrite, 0)])
    t.is(copied.bytes, 32 * 4096)
    const got = await contentOf(b)
    const candidates = [before, after, targetWrite]
    for (let block = 0; block < 32; block++) {
      const piece = got.subarray(block * 4096, (block + 1) * 4096)
      t.true(candidates.some(c => c.subarray(block * 4096, (block + 1) * 4096).equals(piece)), `block ${block} is one of the writes`)
    }
    // The copy took the whole range at one moment: its blocks are all "before" or all "after" unless
    // the target's own write came last over them.
    const fromSource = [before, after].map(c => Array.from({ length: 32 }, (_, i) => got.subarray(i * 4096, (i + 1) * 4096).equals(c.subarray(i * 4096, (i + 1) * 4096))).filter(Boolean).length)
    t.true(fromSource.includes(0) || got.equals(targetWrite), `not a mix of the source's before and after (${fromSource.join('/')})`)
  })
})

test('copies in opposite directions at once both finish, each whole', async t => {
  await withPool(4096, async pool => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    const da = bytesOf(1, 16 * 4096)
    const db = bytesOf(2, 16 * 4096)
    await a.write(da, 0)
    await b.write(db, 0)
    const results = await Promise.all([pool.copyRange(a, b, 0, 16 * 4096, 16 * 4096), pool.copyRange(b, a, 0, 16 * 4096, 16 * 4096)])
    t.deepEqual(results.map(r => r.bytes), [16 * 4096, 16 * 4096])
    t.true((await contentOf(b)).subarray(16 * 4096).equals(da))
    t.true((await contentOf(a)).subarray(16 * 4096).equals(db))
  })
})

test('a copy into a backup is refused; a copy from a volume removed while it waited is NOT_FOUND', async t => {
  await withPool(4096, async pool => {
    const a = await pool.createDisk('a.img')
    await a.write(bytesOf(1, 16 * 4096), 0)
    const backup = await pool.backup(a, 'b.img')
    const refused = await t.throwsAsync(pool.copyRange(a, backup, 0, 0, 4096))
    t.is((refused as { code?: string }).code, 'READ_ONLY')
    const c = await pool.createDisk('c.img')
    const [copied, removed] = await Promise.allSettled([
      (async () => { await a.write(bytesOf(2, 4096), 0); return await pool.copyRange(a, c, 0, 0, 16 * 4096) })(),
      pool.remove(a)
    ])
    t.is(removed.status, 'fulfilled')
    if (copied.status === 'rejected') t.is((copied.reason as { code?: string }).code, 'NOT_FOUND')
  })
})
