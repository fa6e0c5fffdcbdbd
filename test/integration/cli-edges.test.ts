/**
 * Smaller CLI edges (issue #9): every command answers --json (rm and restore included) with the same
 * ISO 8601 times as its text; a command writing into a pipe closed early (`| head -c1`) exits quietly;
 * mounting a pool onto its own directory, a mountpoint inside the pool or a pool inside the mountpoint
 * is refused with one line before anything is created.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { spawnSync } from 'node:child_process'
import { call } from '../../src/control/client'
import { cli, vdiskfs, withMount } from '../helpers/mount'

const iso = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/

test.serial('rm and restore answer --json; ls shows the same times in text and JSON', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, 'x')
  const backup = JSON.parse((await vdiskfs('backup', disk, 'b', '--json')).stdout) as Record<string, unknown>
  t.regex(String(backup.created), iso)
  const restored = await vdiskfs('restore', m.image('backups', 'b.img'), disk, '--json')
  t.is(restored.code, 0, restored.stderr)
  const restoredJson = JSON.parse(restored.stdout) as { restored: { kind: string, name: string, modified: string }, from: { kind: string, name: string } }
  t.is(restoredJson.restored.name, 'd.img')
  t.is(restoredJson.from.name, 'b.img')
  t.regex(restoredJson.restored.modified, iso)
  const volumes = JSON.parse((await vdiskfs('ls', m.mnt, '--json')).stdout) as Array<{ name: string, created: string, modified: string }>
  const text = (await vdiskfs('ls', m.mnt)).stdout
  for (const v of volumes) {
    t.regex(v.created, iso)
    t.regex(v.modified, iso)
    t.true(text.includes(v.created), `${v.name}: text shows ${v.created}`)
    t.false('createdMs' in v, 'no second time format')
  }
  const removed = await vdiskfs('rm', disk, '--json')
  t.is(removed.code, 0, removed.stderr)
  const removedJson = JSON.parse(removed.stdout) as { removed: { kind: string, name: string, created: string } }
  t.is(removedJson.removed.name, 'd.img')
  t.regex(removedJson.removed.created, iso)
  t.true((await vdiskfs('rm', m.image('backups', 'b.img'))).stdout.includes('removed'), 'text says what it did')
})

test.serial('a command writing into a pipe closed early exits quietly', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'd.img')
  fs.writeFileSync(disk, 'x')
  // Enough volumes that `ls --json` writes far more than a pipe holds (64 KiB).
  for (let i = 0; i < 400; i++) await call(m.mnt, 'backup', { sourceKind: 'disk', sourceName: 'd.img', name: `backup-with-a-long-name-${i}.img` })
  for (const args of [['ls', m.mnt, '--json'], ['du', m.mnt, '--json'], ['ls', m.mnt], ['verify', m.mnt, '--json']]) {
    const result = spawnSync('sh', ['-c', '"$0" "$@" 2>"$ERR" | head -c1 >/dev/null', cli, ...args],
      { encoding: 'utf8', env: { ...process.env, ERR: path.join(m.dir, 'stderr') } })
    t.is(result.status, 0)
    const stderr = fs.readFileSync(path.join(m.dir, 'stderr'), 'utf8')
    t.is(stderr, '', `${args.join(' ')}: nothing on stderr`)
  }
  // The same through bash, where the writer's own status is visible.
  const status = spawnSync('bash', ['-c', '"$0" ls "$1" --json | head -c1 >/dev/null; echo "${PIPESTATUS[0]}"', cli, m.mnt], { encoding: 'utf8' })
  t.is(status.stdout.trim(), '0', 'exits 0')
  t.is(status.stderr, '')
})

test.serial('a pool and its mountpoint that overlap are refused before anything is created', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-overlap-'))
  t.teardown(() => {
    for (const mnt of [path.join(dir, 'same'), path.join(dir, 'outer'), path.join(dir, 'p', 'mnt'), path.join(dir, 'm')]) spawnSync('fusermount3', ['-uz', mnt])
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const refused = async (pool: string, mnt: string, what: string): Promise<void> => {
    const result = await vdiskfs('mount', pool, mnt)
    t.is(result.code, 1, `${what}: ${result.stderr}`)
    t.is(result.stderr.trim().split('\n').length, 1, what)
    t.regex(result.stderr, /^vdiskfs mount: .*(inside|the same directory)/, what)
  }
  const same = path.join(dir, 'same')
  fs.mkdirSync(same)
  await refused(same, same, 'pool = mountpoint')
  await refused(same + '/', path.join(dir, '.', 'same'), 'pool = mountpoint, spelled differently')
  t.deepEqual(fs.readdirSync(same), [], 'nothing created')
  const outer = path.join(dir, 'outer')
  fs.mkdirSync(outer)
  await refused(path.join(outer, 'pool'), outer, 'pool inside the mountpoint')
  t.deepEqual(fs.readdirSync(outer), [], 'nothing created')
  // An existing pool, and a mountpoint made inside it.
  const pool = path.join(dir, 'p')
  const m = path.join(dir, 'm')
  fs.mkdirSync(m)
  const mounted = await vdiskfs('mount', pool, m, '--json')
  t.is(mounted.code, 0, mounted.stderr)
  t.like(JSON.parse(mounted.stdout), { pool, mountpoint: m })
  const unmounted = await vdiskfs('umount', m, '--json')
  t.is(unmounted.code, 0, unmounted.stderr)
  t.like(JSON.parse(unmounted.stdout), { unmounted: m })
  const inner = path.join(pool, 'mnt')
  fs.mkdirSync(inner)
  const before = fs.readdirSync(pool).sort()
  await refused(pool, inner, 'mountpoint inside the pool')
  t.deepEqual(fs.readdirSync(pool).sort(), before, 'no pid file or anything else left')
})
