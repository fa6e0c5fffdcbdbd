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
import { Sealer } from '../../src/seal/sealer'
import { PendingMap } from '../../src/volume/lazy-refs'

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

/**
 * Whether `promise` settles within `withinMs` (150 ms by default: what must wait is shown not to; no
 * timing is asserted). What must not wait is asked with a long bound (settles()): what it would wait
 * for is held for the whole test, so a longer bound only spares a loaded machine a false failure.
 */
export const settledSoon = async (promise: Promise<unknown>, withinMs = 150): Promise<boolean> => {
  let settled = false
  const done = promise.then(() => { settled = true }, () => { settled = true })
  let timer: NodeJS.Timeout | undefined
  await Promise.race([done, new Promise(resolve => { timer = setTimeout(resolve, withinMs) })])
  clearTimeout(timer)
  return settled
}

/** Whether `promise` settles while what it must not wait for is held (at most 20 s). */
export const settles = async (promise: Promise<unknown>): Promise<boolean> => await settledSoon(promise, 20_000)

/** Every block not here yet (not the head, not the hole), sent as a hydrator would. */
export async function hydrateAll (pool: Pool, data: Buffer[]): Promise<void> {
  await pool.hydrate(data.flatMap((block, i) => i < 2 || i === 8 ? [] : [{ data: block, hash: hash(block) }]))
}

export async function allEqual (t: ExecutionContext, volume: Volume, model: Buffer[], when: string): Promise<void> {
  for (let i = 0; i < blocks; i++) t.deepEqual(await readBlock(volume, i), model[i], `${volume.label} block ${i} ${when}`)
}

/** A lazy pull's references applied in batches of 4 (pool.lazyRefsBatchRefs = smallBatch): 13 references, 4 batches, the last `lastBatch`. */
export const smallBatch = 4
export const lastBatch = 3

/** Every block of the source as sealed chunks of disks/d.img: kept (every reference finds its chunk here), or removed (garbage for gc). */
export async function allHere (pool: Pool, data: Buffer[], keep: boolean): Promise<void> {
  const disk = await pool.createDisk('d.img')
  for (let i = 2; i < blocks; i++) await disk.write(data[i], i * bs)
  await new Sealer(pool, () => {}).sealPending(true)
  if (!keep) await pool.remove(disk)
}

/**
 * The apply's walk held between its batches: batch k of the walk (k < lastBatch) goes once allow(n) with
 * n > k was called; the last batch (a reader's, taken out of order) always goes. `order` is every batch
 * in the order the apply took it.
 */
export class Steps {
  order: number[] = []
  private allowed = 1
  private waiters: Array<() => void> = []
  seam = async (batch: number): Promise<void> => {
    this.order.push(batch)
    while (batch !== lastBatch && batch >= this.allowed) await new Promise<void>(resolve => this.waiters.push(resolve))
  }

  allow (n: number): void {
    this.allowed = n
    const waiters = this.waiters
    this.waiters = []
    for (const wake of waiters) wake()
  }

  /** Resolves once the apply has asked for batch `batch` at the seam (it is parked there if held). */
  async reached (batch: number): Promise<void> {
    for (let i = 0; i < 3000 && !this.order.includes(batch); i++) await new Promise(resolve => setTimeout(resolve, 10))
    if (!this.order.includes(batch)) throw new Error(`the apply never reached batch ${batch} (${this.order.join(' ')})`)
  }
}

/** backups/NAME pulled lazily (the head stored, 13 references in 4 batches), its apply held at `steps`. */
export async function pendingPull (pool: Pool, name: string, data: Buffer[], steps: Steps): Promise<{ backup: Volume, uuid: string, pending: PendingMap }> {
  pool.lazyRefsSeams = { beforeBatch: steps.seam }
  const uuid = crypto.randomUUID()
  const key = `${uuid}:full`
  const session = pool.imports.begin({ key, uuid, baseUuid: null, size: blocks * bs, blockBytes: bs, createdMs: Date.now(), source: null, lazy: true }, name)
  pool.lazy.begin({ uuid, importKey: key, remote: 'offsite', manifest: 'ab'.repeat(16), chunks: 0, startedMs: Date.now() })
  const refs = pool.lazyRefs(uuid)
  let backup: Volume
  try {
    await session.store([0, 1].map(index => ({ index, data: data[index], hash: hash(data[index]) })))
    for (let i = 2; i < blocks; i++) if (i !== 8) await refs.push(i, hash(data[i]))
    backup = await pool.finishLazy(session, refs)
  } finally { session.close() }
  pool.lazy.started(uuid)
  const pending = backup.pendingMap
  if (pending === null) throw new Error('the backup is not pending')
  return { backup, uuid, pending }
}
