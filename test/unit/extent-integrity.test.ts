/**
 * Every byte served from a delta extent is verified (issue #9, item 5): a flipped byte in an extent
 * fails exactly its block with CORRUPT (EIO through FUSE) and a report, a truncated extent fails the
 * blocks it lost instead of reading zeros, verify names them, and sealing refuses a damaged extent
 * rather than making the damage permanent. Unaligned partial writes keep their sectors' checksums
 * right (a sector is completed from what the slot holds).
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { verifyPool } from '../../src/inspect/verify'
import { extentSlotsMax } from '../../src/limits'
import { flipByte } from '../helpers/damage'

const blockBytes = 64 * 1024

function tempPool (t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-integrity-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return path.join(dir, 'pool')
}

async function readBlock (pool: Pool, block: number): Promise<Buffer | Error> {
  const out = Buffer.alloc(blockBytes)
  try { await pool.get('disk', 'd.img').read(out, block * blockBytes); return out } catch (err) { return err as Error }
}

/** A pool with one disk of 8 blocks of random data, committed and closed; returns the data. */
async function makePool (dir: string): Promise<Buffer> {
  const pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  const data = crypto.randomBytes(8 * blockBytes)
  await (await pool.createDisk('d.img')).write(data, 0)
  await pool.close()
  return data
}

function extentFile (dir: string): string {
  const names = fs.readdirSync(path.join(dir, 'extents')).filter(n => n.endsWith('.dx'))
  if (names.length !== 1) throw new Error(`expected one extent, found ${names.join(',')}`)
  return path.join(dir, 'extents', names[0])
}

test.serial('a flipped byte in an extent fails exactly its block, is reported by verify, and is never sealed', async t => {
  const dir = tempPool(t)
  const data = await makePool(dir)
  const file = extentFile(dir)
  const size = fs.statSync(file).size
  // Block 5 is slot 5: the sixth block-sized piece from the end of the file's slots.
  const at = size - 3 * blockBytes + 12345
  flipByte(file, at, 0x10)
  const pool = Pool.open(dir, { workers: 1 })
  try {
    for (let block = 0; block < 8; block++) {
      const got = await readBlock(pool, block)
      if (block === 5) t.true(got instanceof Error && /checksum/.test(got.message), `block 5: ${String(got instanceof Error ? got.message : 'read succeeded')}`)
      else t.true(got instanceof Buffer && got.equals(data.subarray(block * blockBytes, (block + 1) * blockBytes)), `block ${block}`)
    }
    const report = await verifyPool(pool, { done: 0, total: 0 })
    t.true(JSON.stringify(report).includes('checksum'), JSON.stringify(report).slice(0, 400))
    const sealed = await new Sealer(pool, () => {}).sealPending(true)
    t.true(sealed.failed.length > 0, 'sealing refuses the damaged extent')
    t.true(await readBlock(pool, 5) instanceof Error, 'and the block still fails')
  } finally {
    await pool.close()
  }
})

test.serial('a truncated extent fails the blocks it lost instead of reading zeros', async t => {
  const dir = tempPool(t)
  const data = await makePool(dir)
  const file = extentFile(dir)
  fs.truncateSync(file, fs.statSync(file).size - 3 * blockBytes - 100)
  const pool = Pool.open(dir, { workers: 1 })
  try {
    for (let block = 0; block < 8; block++) {
      const got = await readBlock(pool, block)
      if (block >= 4) t.true(got instanceof Error, `block ${block} fails`)
      else t.true(got instanceof Buffer && got.equals(data.subarray(block * blockBytes, (block + 1) * blockBytes)), `block ${block}`)
    }
  } finally {
    await pool.close()
  }
  fs.truncateSync(file, 0)
  const again = Pool.open(dir, { workers: 1 })
  try {
    for (let block = 0; block < 8; block++) t.true(await readBlock(again, block) instanceof Error, `emptied: block ${block} fails`)
  } finally {
    await again.close()
  }
})

test.serial('unaligned partial writes into fresh and written blocks read back exactly, also after a reopen', async t => {
  const dir = tempPool(t)
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  const model = Buffer.alloc(16 * blockBytes)
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(model.length)
    let seed = 7
    const next = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
    for (let i = 0; i < 300; i++) {
      const offset = next(model.length - 1)
      const length = 1 + next(Math.min(3 * 4096, model.length - offset))
      const bytes = crypto.randomBytes(length)
      await disk.write(bytes, offset)
      bytes.copy(model, offset)
    }
    const back = Buffer.alloc(model.length)
    await disk.read(back, 0)
    t.true(back.equals(model))
  } finally {
    await pool.close()
  }
  pool = Pool.open(dir, { workers: 1 })
  try {
    const back = Buffer.alloc(model.length)
    await pool.get('disk', 'd.img').read(back, 0)
    t.true(back.equals(model), 'after a reopen')
    t.is((await verifyPool(pool, { done: 0, total: 0 })).problems.length, 0)
  } finally {
    await pool.close()
  }
})

test.serial('concurrent writes that fill an extent never claim a slot past its last (its checksum table lies there)', async t => {
  const dir = tempPool(t)
  const small = 4096
  const pool = Pool.open(dir, { create: true, blockBytes: small, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    const blocks = extentSlotsMax + 256
    const data = crypto.randomBytes(blocks * small)
    // 48 writers at a time (16384 is no multiple of 48, so a batch spans the extent's end): many
    // wait for the same active extent.
    for (let at = 0; at < blocks; at += 48) {
      await Promise.all(Array.from({ length: Math.min(48, blocks - at) }, async (_, i) => {
        const block = at + i
        await disk.write(data.subarray(block * small, (block + 1) * small), block * small)
      }))
    }
    const back = Buffer.alloc(data.length)
    await disk.read(back, 0)
    t.true(back.equals(data))
    const sealed = await new Sealer(pool, () => {}).sealPending(true)
    t.deepEqual(sealed.failed, [])
  } finally {
    await pool.close()
  }
})
