/**
 * A group import on the engine (issue #21, export/import of a consistency group as a unit): staged
 * members are made at once as one group, or not at all (a name taken meanwhile, a member not staged);
 * and the group stream's reader refuses a damaged or cut stream.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Readable } from 'node:stream'
import { Pool } from '../../src/volume/pool'
import { blockHash } from '../../src/transfer/stream'
import { GroupStreamReader, groupStream } from '../../src/transfer/group-stream'

const bs = 4096

function tempPool (t: { teardown: (f: () => Promise<void>) => void }): Pool {
  const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-groupimport-')), 'pool')
  const pool = Pool.open(dir, { create: true, blockBytes: bs, workers: 1 })
  t.teardown(async () => { await pool.close().catch(() => {}); fs.rmSync(path.dirname(dir), { recursive: true, force: true }) })
  return pool
}

/** Stages a 4-block stream as backup `name`; returns its key and data. */
async function stage (pool: Pool, name: string): Promise<{ key: string, data: Buffer[] }> {
  const uuid = crypto.randomUUID()
  const key = `${uuid}:full`
  const data = Array.from({ length: 4 }, () => crypto.randomBytes(bs))
  const session = pool.imports.begin({ key, uuid, baseUuid: null, size: 4 * bs, blockBytes: bs, createdMs: Date.now(), source: null }, name)
  try {
    await session.store(data.map((block, index) => ({ index, data: block, hash: blockHash(block) })))
    await session.stage()
  } finally { session.close() }
  return { key, data }
}

test('staged members are made at once as one group; a name taken meanwhile makes none of them', async t => {
  const pool = tempPool(t)
  const a = await stage(pool, 'g-a.img')
  const b = await stage(pool, 'g-b.img')
  t.is(pool.list('backup').length, 0, 'nothing visible while staged')
  // A disk backup takes one member's name before the group's finish: nothing is made.
  const disk = await pool.createDisk('d.img')
  await pool.backup(disk, 'g-b.img')
  await t.throwsAsync(pool.imports.finishGroup('g', [a.key, b.key]), { message: /g-b\.img/ })
  t.deepEqual(pool.list('backup').map(v => v.name), ['g-b.img'])
  await pool.remove(pool.get('backup', 'g-b.img'))
  // Still staged: the group is made now, both members at once, with the group's name.
  const made = await pool.imports.finishGroup('g', [a.key, b.key])
  t.deepEqual(made.map(v => `${v.name}:${String(v.groupName)}`), ['g-a.img:g', 'g-b.img:g'])
  for (const [i, member] of [a, b].entries()) {
    const out = Buffer.alloc(4 * bs)
    await made[i].read(out, 0)
    t.true(out.equals(Buffer.concat(member.data)))
  }
  t.deepEqual(pool.groupMembers('g').map(v => v.name), ['g-a.img', 'g-b.img'])
  // Finished: no longer staged, and the group name is used once.
  await t.throwsAsync(pool.imports.finishGroup('g', [a.key]), { code: 'NOT_FOUND' })
  const c = await stage(pool, 'h-c.img')
  await t.throwsAsync(pool.imports.finishGroup('g', [c.key]), { message: /group g/ })
  t.is(pool.list('backup').length, 2)
})

async function collect (readable: Readable): Promise<Buffer> {
  const parts: Buffer[] = []
  for await (const part of readable) parts.push(part as Buffer)
  return Buffer.concat(parts)
}

async function readAll (bytes: Buffer): Promise<string[]> {
  const reader = new GroupStreamReader(Readable.from([bytes]))
  const header = await reader.readHeader()
  const out: string[] = []
  for (let i = 0; i < header.members.length; i++) out.push((await collect(reader.member())).toString())
  await reader.end()
  return out
}

test('the group stream carries each member whole; a damaged or cut one is refused', async t => {
  const members = ['first member', 'x'.repeat(100_000), 'third']
  const bytes = await collect(groupStream({ version: 1, group: 'g', members: members.map((_, i) => ({ name: `g-${i}.img` })) }, i => Readable.from([Buffer.from(members[i])])))
  t.deepEqual(await readAll(bytes), members)
  const flipped = Buffer.from(bytes)
  flipped[20] ^= 1 // in the header's JSON
  await t.throwsAsync(readAll(flipped), { message: /checksum/ })
  for (const cut of [10, bytes.length - 30, bytes.length - 5]) await t.throwsAsync(readAll(bytes.subarray(0, cut)), { message: /ends inside/ }, `cut at ${cut}`)
  await t.throwsAsync(readAll(Buffer.concat([bytes, Buffer.from('more')])), { message: /after the group stream/ })
  await t.throwsAsync(readAll(Buffer.from('VDSTREAM and then something')), { message: /not a group stream/ })
})
