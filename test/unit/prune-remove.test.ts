/**
 * Prune's removals (the `prune` control operation, src/daemon/server/ops-transfer.ts): every backup it
 * removes goes in one commit (issue #21: prune in time proportional to what it frees, not a commit of
 * its own per backup: two syncs each, 26 ms a backup at 10,000), a consistency group is removed whole
 * or kept whole, a backup open or protected is kept with its group, and the pool
 * reopens with exactly the backups kept.
 */
import test from 'ava'
import { HandlerContext } from '../../src/daemon/server/handler'
import { transferHandlers } from '../../src/daemon/server/ops-transfer'
import { Pool } from '../../src/volume/pool'
import { withPool } from '../helpers/pool'
import { bytesOf } from '../helpers/model'

interface PruneReply { backups: Array<{ name: string, removed: boolean, error: string | null }> }

async function prune (pool: Pool, args: Record<string, unknown>): Promise<PruneReply> {
  const handlers = transferHandlers({ pool } as unknown as HandlerContext) as unknown as Record<string, (a: Record<string, unknown>) => Promise<PruneReply>>
  return await handlers.prune(args)
}

function backupNames (pool: Pool): string[] {
  return pool.list().filter(v => v.kind === 'backup').map(v => v.name).sort()
}

test('prune removes every backup it decides on in one commit, and the pool reopens with the rest', async t => {
  await withPool('vdiskfs-prune-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    for (let i = 0; i < 30; i++) {
      await disk.write(bytesOf(i, 4096), i * 65536)
      await pool.backup(disk, `b${String(i).padStart(2, '0')}.img`)
    }
    const before = pool.commitStats().commits
    const reply = await prune(pool, { last: 10 })
    t.is(reply.backups.filter(b => b.removed).length, 20)
    t.is(pool.commitStats().commits - before, 1, 'one commit for the 20 removals')
    const kept = Array.from({ length: 10 }, (_, i) => `b${20 + i}.img`)
    t.deepEqual(backupNames(pool), kept)
    pool = await reopen()
    t.deepEqual(backupNames(pool), kept)
  })
})

test('a group with a member open is kept whole; a protected backup is kept; the others go', async t => {
  await withPool('vdiskfs-prune-', async (pool, reopen) => {
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    await a.write(bytesOf(1, 4096), 0)
    await b.write(bytesOf(2, 4096), 0)
    const old = await pool.backupGroup([a, b], ['a-old.img', 'b-old.img'], 'old')
    await pool.backupGroup([a, b], ['a-mid.img', 'b-mid.img'], 'mid')
    await pool.backupGroup([a, b], ['a-new.img', 'b-new.img'], 'new')
    // b-old is opened (a reader) and a-mid protected: prune keep-last 1 would remove both groups.
    pool.opened(old[1], false)
    await pool.protect(pool.list().find(v => v.name === 'a-mid.img')!, true)
    const reply = await prune(pool, { last: 1 })
    t.deepEqual(reply.backups.filter(r => r.removed), [])
    t.truthy(reply.backups.find(r => r.name === 'a-old.img')?.error)
    await pool.released(old[1])
    const again = await prune(pool, { last: 1 })
    t.deepEqual(again.backups.filter(r => r.removed).map(r => r.name).sort(), ['a-old.img', 'b-old.img'])
    const kept = ['a-mid.img', 'a-new.img', 'b-mid.img', 'b-new.img']
    t.deepEqual(backupNames(pool), kept)
    pool = await reopen()
    t.deepEqual(backupNames(pool), kept)
  })
})

test('prune beside rm of the same backups, a new backup and writes: each backup removed once, and the pool reopens with what both left', async t => {
  await withPool('vdiskfs-prune-', async (pool, reopen) => {
    const disk = await pool.createDisk('d.img')
    for (let i = 0; i < 12; i++) {
      await disk.write(bytesOf(i, 4096), i * 65536)
      await pool.backup(disk, `b${String(i).padStart(2, '0')}.img`)
    }
    const b00 = pool.list().find(v => v.name === 'b00.img')!
    const b09 = pool.list().find(v => v.name === 'b09.img')!
    const [pruned, rm1, rm2, made] = await Promise.allSettled([
      prune(pool, { last: 4 }),
      pool.remove(b00),
      pool.remove(b09),
      (async () => { await disk.write(bytesOf(77, 4096), 0); return await pool.backup(disk, 'b12.img') })()
    ])
    t.is(pruned.status, 'fulfilled')
    t.is(made.status, 'fulfilled')
    // rm of b00 (one prune removes too) either ran first or found it gone: NOT_FOUND, never a second removal.
    for (const r of [rm1, rm2]) if (r.status === 'rejected') t.is((r.reason as { code?: string }).code, 'NOT_FOUND', String(r.reason))
    const left = backupNames(pool)
    t.false(left.includes('b00.img'))
    t.false(left.includes('b09.img'))
    t.true(left.includes('b12.img'))
    // eslint-disable-next-line require-atomic-updates -- the operations above are all settled: the test's own pool, reopened in sequence
    pool = await reopen()
    t.deepEqual(backupNames(pool), left)
    const again = await prune(pool, { last: 4 })
    t.deepEqual(again.backups.filter(b => b.removed), [])
  })
})
