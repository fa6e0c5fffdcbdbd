/**
 * Issue #21: mount does not walk every map page before serving after a clean stop (the start-up gc took
 * most of a mount with hundreds of backups); after an unclean one it still frees what the dead run left
 * before serving. Told apart by what is left for the first `vdiskfs gc` after the mount: the pages of
 * removed backups, freed by nobody yet after a clean stop, already freed after a kill.
 */
import test from 'ava'
import fs from 'node:fs'
import { call } from '../../src/control/client'
import { TestMount, vdiskfs, withMount } from '../helpers/mount'

const blockBytes = 64 * 1024
const pageBytes = 4096 * blockBytes

/** A disk and 20 backups, each after a write to another map page; then 10 of them removed (their own pages are garbage). */
async function garbage (t: { is: (a: unknown, b: unknown, m?: string) => void }, m: TestMount): Promise<void> {
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, '')
  fs.truncateSync(disk, 20 * pageBytes)
  const fd = fs.openSync(disk, 'r+')
  try {
    for (let i = 0; i < 20; i++) {
      fs.writeSync(fd, Buffer.alloc(blockBytes, `block ${i} `), 0, blockBytes, i * pageBytes)
      await call(m.mnt, 'backup', { sourceKind: 'disk', sourceName: 'd.img', name: `b${i}.img` })
      // The next write copies page i again: backup i alone keeps the copy it shares with no one once b(i+1) is taken.
      fs.writeSync(fd, Buffer.alloc(blockBytes, `again ${i} `), 0, blockBytes, i * pageBytes + blockBytes)
    }
  } finally { fs.closeSync(fd) }
  for (let i = 0; i < 20; i += 2) t.is((await vdiskfs('rm', m.image('backups', `b${i}.img`))).code, 0)
}

/** Whether backup `i` still reads its block. */
function holds (m: TestMount, i: number): boolean {
  const fd = fs.openSync(m.image('backups', `b${i}.img`), 'r')
  try {
    const out = Buffer.alloc(blockBytes)
    fs.readSync(fd, out, 0, blockBytes, i * pageBytes)
    return out.equals(Buffer.alloc(blockBytes, `block ${i} `))
  } finally { fs.closeSync(fd) }
}

async function gcPages (t: { is: (a: unknown, b: unknown, m?: string) => void }, m: TestMount): Promise<number> {
  const result = await vdiskfs('gc', m.mnt, '--json')
  t.is(result.code, 0, result.stderr)
  return (JSON.parse(result.stdout) as { pagesFreed: number }).pagesFreed
}

test.serial('after a clean stop, mount leaves the gc walk to the background; after a kill, it frees what the dead run left first', async t => {
  const m = await withMount(t)
  await garbage(t, m)
  await m.umount()
  await m.mount()
  const left = await gcPages(t, m)
  t.true(left > 0, 'the removed backups\' pages were still there after a clean stop and mount: no gc ran before serving')
  for (let i = 1; i < 20; i += 2) t.true(holds(m, i), `b${i}`)

  for (let i = 1; i < 20; i += 4) t.is((await vdiskfs('rm', m.image('backups', `b${i}.img`))).code, 0)
  await call(m.mnt, 'commit')
  await m.kill()
  await m.mount()
  t.is(await gcPages(t, m), 0, 'after a kill, the start-up gc freed the removed backups\' pages before serving')
  for (let i = 3; i < 20; i += 4) t.true(holds(m, i), `b${i}`)
})
