/**
 * Names (issue #11): disks/ and clones/ accept what a Linux filesystem accepts (no '/', no NUL, at most
 * 255 bytes), so rsync's `.rs.img.XXXXXX` temporary files work, with and without --inplace; names
 * starting with '.' are ordinary names that survive a crash (hidden volumes are marked otherwise); and
 * the CLI prints names with control characters escaped.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { ChildProcess, spawn } from 'node:child_process'
import { TestMount, run, vdiskfs, withMount } from '../helpers/mount'

async function listed (m: TestMount): Promise<string[]> {
  const result = await vdiskfs('ls', m.mnt, '--json')
  return (JSON.parse(result.stdout) as Array<{ kind: string, name: string }>).map(v => `${v.kind}/${v.name}`).sort()
}

const code = (f: () => unknown): string => { try { f(); return 'ok' } catch (err) { return (err as NodeJS.ErrnoException).code ?? 'error' } }

test.serial('rsync into disks/, with and without --inplace, then cmp', async t => {
  const m = await withMount(t)
  const source = path.join(m.dir, 'source.img')
  // 3 MiB of data with a hole in the middle, as a VM image has.
  const data = crypto.randomBytes(3 * 1024 * 1024)
  data.fill(0, 1024 * 1024, 2 * 1024 * 1024)
  fs.writeFileSync(source, data)
  const target = m.image('disks', 'rs.img')
  await run('rsync', ['--sparse', source, target])
  await run('cmp', [source, target])
  // A change in the middle: rsync's delta transfer writes a new temporary file and renames it over.
  const fd = fs.openSync(source, 'r+')
  fs.writeSync(fd, crypto.randomBytes(100000), 0, 100000, 1500000)
  fs.closeSync(fd)
  await run('rsync', ['--ignore-times', '--no-whole-file', source, target])
  await run('cmp', [source, target])
  // --inplace: the target is rewritten where it is.
  const fd2 = fs.openSync(source, 'r+')
  fs.writeSync(fd2, crypto.randomBytes(4096), 0, 4096, 3 * 1024 * 1024 - 4096)
  fs.closeSync(fd2)
  await run('rsync', ['--ignore-times', '--inplace', '--no-whole-file', source, target])
  await run('cmp', [source, target])
  // A whole directory (rsync -a keeps modes and times).
  const tree = path.join(m.dir, 'tree')
  fs.mkdirSync(tree)
  fs.copyFileSync(source, path.join(tree, 'a.img'))
  fs.writeFileSync(path.join(tree, '.dot.img'), 'dotted')
  // rsync -a sets the target directory's times last (they differ from the source's): accepted, ignored.
  fs.utimesSync(tree, new Date('2020-01-01T00:00:00Z'), new Date('2020-01-01T00:00:00Z'))
  await run('rsync', ['-a', `${tree}/`, `${path.join(m.mnt, 'disks')}/`])
  await run('cmp', [source, m.image('disks', 'a.img')])
  t.is(fs.readFileSync(m.image('disks', '.dot.img'), 'utf8'), 'dotted')
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')).sort(), ['.dot.img', 'a.img', 'rs.img'], 'no temporary file is left')
  t.deepEqual(await listed(m), ['disk/.dot.img', 'disk/a.img', 'disk/rs.img'])
})

test.serial('names a filesystem accepts are accepted; only "/", NUL, "." and ".." and names over 255 bytes are refused', async t => {
  const m = await withMount(t)
  const good = ['.hidden', '..dots', 'sp ace.img', 'ünïcode.img', 'emoji-😀', '-dash', 'x'.repeat(255), 'é'.repeat(127)]
  for (const name of good) {
    fs.writeFileSync(m.image('disks', name), name)
    t.is(fs.readFileSync(m.image('disks', name), 'utf8'), name, name)
  }
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')).sort(), [...good].sort())
  // 256 bytes: refused (EINVAL from the daemon, or ENAMETOOLONG if the kernel refuses first).
  t.regex(code(() => fs.writeFileSync(m.image('disks', 'x'.repeat(256)), 'x')), /^(EINVAL|ENAMETOOLONG)$/)
  t.regex(code(() => fs.writeFileSync(m.image('disks', 'é'.repeat(128)), 'x')), /^(EINVAL|ENAMETOOLONG)$/)
  // rename to and from dotted names, and over one.
  fs.renameSync(m.image('disks', '.hidden'), m.image('disks', '.renamed'))
  fs.renameSync(m.image('disks', '..dots'), m.image('disks', '.renamed'))
  t.is(fs.readFileSync(m.image('disks', '.renamed'), 'utf8'), '..dots')
  // The CLI takes them too: a backup of a dotted disk, a dotted clone of it.
  t.is((await vdiskfs('backup', m.image('disks', '.renamed'), '.b')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', '.b.img'), '.c')).code, 0)
  t.is(fs.readFileSync(m.image('clones', '.c.img'), 'utf8'), '..dots')
  for (const bad of ['a/b', '..', '.', '']) t.is((await vdiskfs('backup', m.image('disks', '.renamed'), bad)).code, 1, JSON.stringify(bad))
  // Names starting with '.' are ordinary: after a SIGKILL of the daemon they are all still there.
  await m.kill()
  await m.mount()
  t.is(fs.readFileSync(m.image('clones', '.c.img'), 'utf8'), '..dots')
  t.true((await listed(m)).includes('disk/.renamed'))
  t.true((await listed(m)).includes('backup/.b.img'))
})

test.serial('a volume removed while open is hidden under a name no user can give; a user may name a file like the old hidden names', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'held.img')
  fs.writeFileSync(disk, 'held')
  const id = (JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout) as Array<{ id: number }>)[0].id
  const holder: ChildProcess = spawn('sh', ['-c', 'exec 3<>"$0"; exec sleep 600', disk], { stdio: 'ignore' })
  t.teardown(() => { try { holder.kill('SIGKILL') } catch {} })
  for (let i = 0; i < 200 && !fs.readdirSync(`/proc/${String(holder.pid)}/fd`).includes('3'); i++) await new Promise(resolve => setTimeout(resolve, 25))
  t.is((await vdiskfs('rm', '--force', disk)).code, 0)
  // The names the pool (and libfuse) used for hidden volumes before are ordinary names now.
  fs.writeFileSync(m.image('disks', `.removed-${id}`), 'mine')
  fs.writeFileSync(m.image('disks', '.fuse_hidden0000000100000002'), 'mine too')
  t.deepEqual(fs.readdirSync(path.join(m.mnt, 'disks')).sort(), ['.fuse_hidden0000000100000002', `.removed-${id}`])
  holder.kill('SIGKILL')
  await new Promise(resolve => setTimeout(resolve, 300))
  await m.kill()
  await m.mount()
  t.deepEqual(await listed(m), ['disk/.fuse_hidden0000000100000002', `disk/.removed-${id}`])
  t.is(fs.readFileSync(m.image('disks', `.removed-${id}`), 'utf8'), 'mine')
})

test.serial('the CLI prints names with control characters escaped', async t => {
  const m = await withMount(t)
  const evil = 'evil\u001b]0;pwned\u0007\u001b[31m.img'
  fs.writeFileSync(m.image('disks', evil), 'x')
  t.is((await vdiskfs('backup', m.image('disks', evil), 'b')).code, 0)
  for (const args of [['ls', m.mnt], ['du', m.mnt], ['backup', m.image('disks', evil), 'b2']]) {
    const result = await vdiskfs(...args)
    t.is(result.code, 0, args.join(' '))
    t.false(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/.test(result.stdout + result.stderr), `${args[0]}: ${JSON.stringify(result.stdout)}`)
    if (args[0] !== 'backup') t.true(result.stdout.includes('evil\\x1b'), `${args[0]} shows the name escaped`)
  }
  // --json carries the name as it is.
  const json = JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout) as Array<{ name: string }>
  t.true(json.some(v => v.name === evil))
})
