/**
 * The source image of the engine's lazy pull tests (lazy-refs.test.ts, lazy-clone.test.ts): 16 blocks of
 * 4 KiB, 0-1 the head (sent with bytes), 8 a hole, 12 the same as 3, the rest random; a pool of that
 * block size, and reading, hydrating and comparing its blocks.
 */
import { ExecutionContext } from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { blake3Hex } from '../../src/remote/remote-format'
import { Pool } from '../../src/volume/pool'
import { Volume } from '../../src/volume/volume'

export const bs = 4096
export const blocks = 16
export const hash = (block: Buffer): Buffer => Buffer.from(blake3Hex(block), 'hex')

export function sourceData (): Buffer[] {
  const data = Array.from({ length: blocks }, () => crypto.randomBytes(bs))
  data[8] = Buffer.alloc(bs)
  data[12] = data[3]
  return data
}

/** A new pool of `bs` blocks in a temporary directory `prefix`..., removed at the test's end. */
export function newPool (t: ExecutionContext, prefix: string): { dir: string, pool: Pool } {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), prefix)), 'pool')
  t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
  return { dir, pool: Pool.open(dir, { create: true, blockBytes: bs, workers: 1 }) }
}

export async function readBlock (volume: Volume, index: number): Promise<Buffer> {
  const out = Buffer.alloc(bs)
  await volume.read(out, index * bs)
  return out
}

/** Whether `promise` settles within 150 ms (what must wait is shown not to; no timing is asserted). */
export const settledSoon = async (promise: Promise<unknown>): Promise<boolean> => {
  let settled = false
  promise.then(() => { settled = true }, () => { settled = true })
  await new Promise(resolve => setTimeout(resolve, 150))
  return settled
}

/** Every block not here yet (not the head, not the hole), sent as a hydrator would. */
export async function hydrateAll (pool: Pool, data: Buffer[]): Promise<void> {
  await pool.hydrate(data.flatMap((block, i) => i < 2 || i === 8 ? [] : [{ data: block, hash: hash(block) }]))
}

export async function allEqual (t: ExecutionContext, volume: Volume, model: Buffer[], when: string): Promise<void> {
  for (let i = 0; i < blocks; i++) t.deepEqual(await readBlock(volume, i), model[i], `${volume.label} block ${i} ${when}`)
}
