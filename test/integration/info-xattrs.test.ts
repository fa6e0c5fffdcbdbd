/**
 * Image facts (issue #10, #11): a default mount serves no xattrs (getfattr: "Operation not supported"), so
 * the kernel stops asking for security.capability before every write; `vdiskfs info IMAGE [--json]` gives
 * the facts instead, the same ones `--xattrs` serves as user.vdiskfs.* attributes.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { execFileAsync, run, vdiskfs, withMount } from '../helpers/mount'

const iso = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

interface Info {
  kind: string
  name: string
  size: number
  source: string | null
  created: string
  modified: string
  referencedBytes: number
  uniqueBytes: number
  storedBytes: number
  unsealedBytes: number
  uid: number
  gid: number
  mode: string
  openHandles: number
}

async function info (image: string): Promise<Info> {
  const result = await vdiskfs('info', image, '--json')
  if (result.code !== 0) throw new Error(`vdiskfs info ${image}: ${result.stderr}`)
  return JSON.parse(result.stdout) as Info
}

/** getfattr's stderr for one attribute (`-n NAME`) or for the list of them (`-d -m -`). */
async function getfattrError (file: string, ...args: string[]): Promise<string> {
  try {
    await execFileAsync('getfattr', [...args, file], { encoding: 'utf8' })
    return ''
  } catch (err) {
    return String((err as { stderr?: string }).stderr)
  }
}

test.serial('a default mount serves no xattrs; vdiskfs info gives the facts', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, crypto.randomBytes(3 * 65536))
  t.regex(await getfattrError(disk, '-n', 'user.vdiskfs.kind'), /Operation not supported/)
  t.regex(await getfattrError(disk, '-n', 'security.capability'), /Operation not supported/)
  t.regex(await getfattrError(disk, '-d', '-m', '-'), /Operation not supported/)
  t.regex(await getfattrError(disk, '-d', '-m', '-'), /Operation not supported/, 'asked again: still none')
  t.true((await vdiskfs('backup', disk, 'b')).code === 0)
  t.true((await vdiskfs('clone', m.image('backups', 'b.img'), 'c')).code === 0)
  fs.writeFileSync(m.image('clones', 'c.img'), crypto.randomBytes(65536), { flag: 'r+' })
  const clone = await info(m.image('clones', 'c.img'))
  t.is(clone.kind, 'clone')
  t.is(clone.name, 'c.img')
  t.is(clone.size, 3 * 65536)
  t.is(clone.source, 'backups/b.img')
  t.regex(clone.created, iso)
  t.regex(clone.modified, iso)
  t.is(clone.uniqueBytes, 65536, 'the one block written to the clone is its alone')
  t.is(clone.referencedBytes, 3 * 65536)
  t.is(clone.storedBytes, clone.referencedBytes)
  t.is(clone.unsealedBytes, 3 * 65536, 'nothing sealed yet')
  t.is(clone.mode, '0600')
  t.is(clone.uid, process.getuid?.() ?? 0)
  t.is(clone.openHandles, 0)
  const diskInfo = await info(disk)
  t.is(diskInfo.source, null)
  t.is(diskInfo.kind, 'disk')
  t.is((await info(m.image('backups', 'b.img'))).mode, '0400')
  // While a handle is open, info counts it.
  const fd = fs.openSync(disk, 'r')
  t.is((await info(disk)).openHandles, 1)
  fs.closeSync(fd)
  // Sealed: nothing waits any more.
  t.is((await vdiskfs('sync', m.mnt)).code, 0)
  t.is((await info(disk)).unsealedBytes, 0)
  // Text: one fact a line, the same times.
  const text = (await vdiskfs('info', disk)).stdout
  t.regex(text, /kind:\s+disk/)
  t.true(text.includes(diskInfo.created))
  // Errors are one line.
  const missing = await vdiskfs('info', m.image('disks', 'nope.img'))
  t.is(missing.code, 1)
  t.is(missing.stderr.trim().split('\n').length, 1)
  t.is((await vdiskfs('info')).code, 2)
})

test.serial('--xattrs serves user.vdiskfs.* attributes that match vdiskfs info; --no-xattrs is still accepted', async t => {
  const m = await withMount(t, '--xattrs')
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, crypto.randomBytes(2 * 65536))
  t.is((await vdiskfs('backup', disk, 'b')).code, 0)
  const backup = m.image('backups', 'b.img')
  for (const image of [disk, backup]) {
    const facts = await info(image)
    const attrs = await run('getfattr', ['-d', '-m', '-', image])
    const attr = (name: string) => new RegExp(`user\\.vdiskfs\\.${name}="([^"]*)"`).exec(attrs)?.[1]
    t.is(attr('kind'), facts.kind)
    t.is(attr('source'), facts.source ?? '')
    t.is(attr('created'), facts.created)
    t.is(Number(attr('size')), facts.size)
    t.is(Number(attr('referenced')), facts.referencedBytes)
    t.is(Number(attr('unique')), facts.uniqueBytes)
  }
  await m.umount()
  await m.mount('--no-xattrs')
  t.regex(await getfattrError(disk, '-n', 'user.vdiskfs.kind'), /Operation not supported/)
})
