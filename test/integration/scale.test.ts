/**
 * Issue #21's scale, small and for correctness (bench/scale.ts has the figures at 10,000 backups and a
 * 1,000-deep chain), through a real mount: 200 backups of one disk, each after a few blocks changed,
 * read back right (before and after sealing, after a prune of most of them and gc, after a remount);
 * a chain of 100 clones (clone of a backup of a clone ...), each writing one block of its own, read
 * right at every depth, and still right after every backup of the chain is removed and gc ran.
 * Backups and clones are asked of the daemon over its control socket (the CLI's process start, 200
 * times, would be most of the test's time); prune, gc, sync and ls go through the CLI.
 */
import test from 'ava'
import fs from 'node:fs'
import { call } from '../../src/control/client'
import { TestMount, vdiskfs, withMount } from '../helpers/mount'

const blockBytes = 64 * 1024
const diskBytes = 4 * 1024 ** 3 // 65,536 blocks: 16 map pages
const blocks = diskBytes / blockBytes

/** The block backup `i` writes (spread over every map page) and what it writes there. */
const placeOf = (i: number): number => 1 + (i * 4099) % (blocks - 1)
const blockOf = (i: number): Buffer => Buffer.alloc(blockBytes, `backup ${i} `)
/** What block 0 holds in backup `i` (only there: the disk overwrites it before the next backup). */
const markOf = (i: number): Buffer => Buffer.alloc(blockBytes, `mark ${i} `)
const zeros = Buffer.alloc(blockBytes)

function readBlock (file: string, block: number): Buffer {
  const fd = fs.openSync(file, 'r')
  try {
    const out = Buffer.alloc(blockBytes)
    fs.readSync(fd, out, 0, blockBytes, block * blockBytes)
    return out
  } finally { fs.closeSync(fd) }
}

function writeBlock (file: string, block: number, data: Buffer): void {
  const fd = fs.openSync(file, 'r+')
  try { fs.writeSync(fd, data, 0, data.length, block * blockBytes) } finally { fs.closeSync(fd) }
}

async function cliOk (t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<string> {
  const result = await vdiskfs(...args)
  t.is(result.code, 0, `vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

/**
 * Backup `i` holds: block 0 = backup i's mark, every earlier backup's block, and none of the later
 * ones (checked at its own place, the next one's, and one further back).
 */
function checkBackup (t: { true: (v: boolean, m?: string) => void }, m: TestMount, i: number, count: number, when: string): void {
  const file = m.image('backups', `b${i}.img`)
  t.true(readBlock(file, 0).equals(markOf(i)), `${when}: b${i} block 0`)
  t.true(readBlock(file, placeOf(i)).equals(blockOf(i)), `${when}: b${i} its own block`)
  t.true(readBlock(file, placeOf(Math.floor(i / 2))).equals(blockOf(Math.floor(i / 2))), `${when}: b${i} an earlier block`)
  if (i + 1 < count) t.true(readBlock(file, placeOf(i + 1)).equals(zeros), `${when}: b${i} not the next backup's block`)
}

test.serial('200 backups of one disk read right before and after sealing, after prune of 150 and gc, and after a remount', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'big.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, diskBytes)
  const count = 200
  for (let i = 0; i < count; i++) {
    writeBlock(disk, 0, markOf(i))
    writeBlock(disk, placeOf(i), blockOf(i))
    await call(m.mnt, 'backup', { sourceKind: 'disk', sourceName: 'big.img', name: `b${i}.img` })
  }
  for (let i = 0; i < count; i += 7) checkBackup(t, m, i, count, 'unsealed')
  await cliOk(t, 'sync', m.mnt)
  for (let i = 0; i < count; i++) checkBackup(t, m, i, count, 'sealed')
  const pruned = JSON.parse(await cliOk(t, 'prune', m.mnt, '--keep-last', '50', '--json')) as { backups: Array<{ name: string, removed: boolean }> }
  t.is(pruned.backups.filter(b => b.removed).length, count - 50)
  const gc = JSON.parse(await cliOk(t, 'gc', m.mnt, '--json')) as { pagesFreed: number, chunksFreed: number }
  t.true(gc.pagesFreed > 0, 'the pruned backups\' own pages are freed')
  t.true(gc.chunksFreed > 0, 'blocks only pruned backups read are freed')
  t.deepEqual(fs.readdirSync(m.image('backups', '')).sort(), Array.from({ length: 50 }, (_, k) => `b${count - 50 + k}.img`).sort())
  for (let i = count - 50; i < count; i++) checkBackup(t, m, i, count, 'after prune and gc')
  // The disk itself: every backup's block.
  for (let i = 0; i < count; i++) t.true(readBlock(disk, placeOf(i)).equals(blockOf(i)), `disk block of backup ${i}`)
  await m.umount()
  await m.mount()
  for (let i = count - 50; i < count; i++) checkBackup(t, m, i, count, 'after a remount')
  t.is(JSON.parse(await cliOk(t, 'verify', m.mnt, '--json')).ok, true)
})

test.serial('a chain of 100 clones (clone of a backup of a clone ...) reads right at every depth, and after its backups are removed and gc ran', async t => {
  const m = await withMount(t)
  const base = m.image('disks', 'base.img')
  fs.writeFileSync(base, '')
  fs.truncateSync(base, diskBytes)
  writeBlock(base, 0, blockOf(0))
  const depth = 100
  let source: { sourceKind: 'disk' | 'clone', sourceName: string } = { sourceKind: 'disk', sourceName: 'base.img' }
  for (let d = 1; d <= depth; d++) {
    await call(m.mnt, 'backup', { ...source, name: `chain${d}.img` })
    await call(m.mnt, 'clone', { sourceKind: 'backup', sourceName: `chain${d}.img`, name: `c${d}.img` })
    writeBlock(m.image('clones', `c${d}.img`), placeOf(d), blockOf(d))
    source = { sourceKind: 'clone', sourceName: `c${d}.img` }
  }
  const check = (when: string): void => {
    for (const d of [1, 2, 50, 99, 100]) {
      const clone = m.image('clones', `c${d}.img`)
      t.true(readBlock(clone, 0).equals(blockOf(0)), `${when}: c${d} the base's block`)
      for (let k = 1; k <= depth; k++) t.true(readBlock(clone, placeOf(k)).equals(k <= d ? blockOf(k) : zeros), `${when}: c${d} block of depth ${k}`)
    }
  }
  check('unsealed')
  await cliOk(t, 'sync', m.mnt)
  check('sealed')
  // Every backup of the chain removed (each has a source of its own, so prune would keep each as its
  // source's newest): the clones keep what they read.
  for (let d = 1; d <= depth; d++) await call(m.mnt, 'rm', { targetKind: 'backup', targetName: `chain${d}.img` })
  t.deepEqual(fs.readdirSync(m.image('backups', '')), [])
  await cliOk(t, 'gc', m.mnt, '--json')
  check('after the backups are removed and gc ran')
  await m.umount()
  await m.mount()
  check('after a remount')
})
