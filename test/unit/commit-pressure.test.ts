/**
 * Many dirty map pages are committed at once, not at the next interval (daemon/commit-pressure.ts): the
 * daemon's peak RSS with writes scattered over a 1 TiB disk grew with the pages one commit carried (all
 * 4,096 of them within one 5 s interval on a fast machine). Here: blocks written one per map page over
 * more pages than the bound, then the check the daemon runs on its timer.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { commitPressure } from '../../src/daemon/commit-pressure'
import { Pool } from '../../src/volume/pool'
import { pageEntries } from '../../src/limits'
import { bytesOf } from '../helpers/model'

test('the check commits once the dirty map pages reach the bound, one commit at a time, and leaves fewer alone', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-commit-pressure-'))
  const blockBytes = 4096
  const pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes, workers: 1 })
  try {
    const disk = await pool.createDisk('d.img')
    await disk.truncate(128 * pageEntries * blockBytes)
    await pool.commit()
    let settled = 0
    const logged: string[] = []
    const check = commitPressure(pool, { settle: () => { settled++ }, collectWrites: () => {}, log: m => logged.push(m) }, 16, 0)
    for (let p = 0; p < 15; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    const before = pool.commitStats()
    t.is(before.dirtyPages, 15)
    t.is(check(), null, 'fewer dirty pages than the bound: no commit')
    t.is(settled, 1, 'the fast path is settled before the count is read')
    for (let p = 15; p < 40; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    const committing = check()
    t.not(committing, null, '40 dirty pages: a commit')
    t.is(check(), null, 'one at a time: no second commit while the first runs')
    await committing
    const after = pool.commitStats()
    t.is(after.commits, before.commits + 1)
    t.is(after.pagesMax, 40)
    t.is(after.dirtyPages, 0)
    t.deepEqual(logged, [])
    // Spacing: after a commit of its own, none again before the spacing passed, however many pages.
    const spaced = commitPressure(pool, { settle: () => {}, collectWrites: () => {}, log: m => logged.push(m) }, 16, 3600000)
    // (new blocks: an overwrite of a block in the disk's own extent changes no map page)
    for (let p = 40; p < 60; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    await spaced()
    t.is(pool.commitStats().dirtyPages, 0)
    for (let p = 60; p < 80; p++) await disk.write(bytesOf(p, blockBytes), p * pageEntries * blockBytes)
    t.is(spaced(), null, 'a second commit within the spacing: none')
    t.is(pool.commitStats().dirtyPages, 20)
    await pool.commit()
    // The pages are durable: a reopened pool reads every block.
    await pool.close()
    const again = Pool.open(path.join(dir, 'pool'), { blockBytes, workers: 1 })
    try {
      const d = again.find('disk', 'd.img')
      if (d === undefined) throw new Error('d.img is gone after a reopen')
      const got = Buffer.alloc(blockBytes)
      for (let p = 0; p < 80; p++) {
        await d.read(got, p * pageEntries * blockBytes)
        t.deepEqual(got, bytesOf(p, blockBytes), `page ${p}`)
      }
    } finally { await again.close() }
  } finally {
    await pool.close().catch(() => {})
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
