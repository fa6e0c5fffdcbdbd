/**
 * A consistency group exported and imported as a unit (issue #21), through real mounts: `export --group`
 * writes one group stream of every member, `import --group` makes every member at once as a group of
 * the receiving pool (or nothing: a stream cut short leaves no backup and no group, and the whole stream
 * imported after it makes the group), clone --group works on what was imported, and the same stream
 * again is refused whole.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import { sha256, vdiskfs, withMount } from '../helpers/mount'

async function cliOk (t: { is: (a: unknown, b: unknown, m?: string) => void }, ...args: string[]): Promise<string> {
  const result = await vdiskfs(...args)
  t.is(result.code, 0, `vdiskfs ${args.join(' ')}: ${result.stderr}`)
  return result.stdout
}

interface Listed { kind: string, name: string, groupName: string | null }

async function backups (mnt: string): Promise<Listed[]> {
  const result = await vdiskfs('ls', mnt, '--json')
  if (result.code !== 0) throw new Error(`ls: ${result.stderr}`)
  return (JSON.parse(result.stdout) as Listed[]).filter(v => v.kind === 'backup')
}

test.serial('export --group and import --group: every member in one stream, made at once as a group of the receiving pool; a cut stream makes nothing, the whole one after it makes the group', async t => {
  const sender = await withMount(t)
  const receiver = await withMount(t)
  const streams = fs.mkdtempSync(`${sender.dir}/streams-`)
  const disks = ['root', 'data'].map(name => sender.image('disks', `${name}.img`))
  for (const [i, disk] of disks.entries()) {
    fs.writeFileSync(disk, '')
    fs.truncateSync(disk, (4 + i) * 1024 * 1024)
    const fd = fs.openSync(disk, 'r+')
    try { fs.writeSync(fd, crypto.randomBytes(3 * 65536 + 100), 0, 3 * 65536 + 100, 65536 * (1 + i)) } finally { fs.closeSync(fd) }
  }
  await cliOk(t, 'backup', ...disks, '--group', 'mon')
  const sums = disks.map(disk => sha256(disk))
  const file = `${streams}/mon.vdgroup`
  const exported = JSON.parse(await cliOk(t, 'export', '--group', 'mon', sender.mnt, '-o', file, '--json')) as { group: string, backups: string[] }
  t.deepEqual(exported.backups.sort(), ['mon-data.img', 'mon-root.img'])

  // Cut short: nothing is made, no group.
  const cut = `${streams}/cut.vdgroup`
  fs.writeFileSync(cut, fs.readFileSync(file).subarray(0, Math.floor(fs.statSync(file).size * 0.8)))
  const failed = await vdiskfs('import', '--group', 'copy', receiver.mnt, cut)
  t.is(failed.code, 1)
  t.regex(failed.stderr, /ends inside|cut|checksum|corrupt/i)
  t.deepEqual(await backups(receiver.mnt), [])

  // Whole: both members at once, named for the new group, with the sender's content.
  const made = JSON.parse(await cliOk(t, 'import', '--group', 'copy', receiver.mnt, file, '--json')) as Array<{ name: string, groupName: string }>
  t.deepEqual(made.map(b => b.name).sort(), ['copy-data.img', 'copy-root.img'])
  const listed = await backups(receiver.mnt)
  t.deepEqual(listed.map(b => `${b.name}:${String(b.groupName)}`).sort(), ['copy-data.img:copy', 'copy-root.img:copy'])
  t.is(sha256(receiver.image('backups', 'copy-root.img')), sums[0])
  t.is(sha256(receiver.image('backups', 'copy-data.img')), sums[1])

  // A group of the receiving pool: cloned whole.
  await cliOk(t, 'clone', '--group', 'copy', receiver.mnt, 'test')
  t.is(sha256(receiver.image('clones', 'test-root.img')), sums[0])
  t.is(sha256(receiver.image('clones', 'test-data.img')), sums[1])

  // The same stream again (the identities are here already): refused, nothing made.
  const again = await vdiskfs('import', '--group', 'other', receiver.mnt, file)
  t.is(again.code, 1)
  t.regex(again.stderr, /identity|exists/i)
  t.is((await backups(receiver.mnt)).length, 2)

  // A single backup's stream is not a group stream, and --since does not go with --group.
  const single = `${streams}/single.vdstream`
  await cliOk(t, 'export', sender.image('backups', 'mon-root.img'), '-o', single)
  const notGroup = await vdiskfs('import', '--group', 'g2', receiver.mnt, single)
  t.is(notGroup.code, 1)
  t.regex(notGroup.stderr, /not a group stream/)
  t.is((await vdiskfs('export', '--group', 'mon', sender.mnt, '--since', 'x', '-o', `${streams}/x`)).code, 2)
  t.is((await vdiskfs('export', '--group', 'nosuch', sender.mnt, '-o', `${streams}/y`)).code, 1)
})
