/**
 * Orderly shutdowns while background work runs, through a real mount (issue #9, item 1): `vdiskfs
 * umount` and SIGTERM of the daemon while `vdiskfs sync` is writing packs, at several moments, then a
 * fresh mount serves every fsynced byte (cmp against the source) and `vdiskfs verify` finds no damage.
 * Before the fix the running seal pass deleted its extent after a "commit" that close had made a
 * no-op: every byte of the extent was lost.
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { run, vdiskfs, withMount } from '../helpers/mount'

function packBytes (pool: string): number {
  let total = 0
  try {
    for (const name of fs.readdirSync(path.join(pool, 'packs'))) total += fs.statSync(path.join(pool, 'packs', name)).size
  } catch {}
  return total
}

for (const how of ['umount', 'SIGTERM'] as const) {
  test.serial(`${how} while sealing writes packs loses no fsynced byte`, async t => {
    const m = await withMount(t)
    const source = path.join(m.dir, 'source.raw')
    await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=160', 'status=none'])
    const disk = m.image('disks', 'd.img')
    // Three rounds, each cut at a later moment of its seal pass.
    for (const [round, packedMiB] of [4, 40, 100].entries()) {
      await run('dd', [`if=${source}`, `of=${disk}`, 'bs=1M', 'conv=fsync,notrunc', 'status=none'])
      // Different bytes each round, so every round has a whole pass of new chunks to write.
      await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=160', 'status=none'])
      await run('dd', [`if=${source}`, `of=${disk}`, 'bs=1M', 'conv=fsync,notrunc', 'status=none'])
      const before = packBytes(m.pool)
      const sync = vdiskfs('sync', m.mnt)
      for (let waited = 0; packBytes(m.pool) - before < packedMiB * 1024 * 1024 && waited < 60000; waited += 20) {
        await new Promise(resolve => setTimeout(resolve, 20))
      }
      if (how === 'umount') {
        const result = await vdiskfs('umount', m.mnt)
        t.is(result.code, 0, result.stderr)
      } else {
        await m.terminate()
      }
      await sync // it fails or succeeds; either way nothing may be lost
      await m.mount()
      await run('cmp', [source, disk])
      const verify = await vdiskfs('verify', m.mnt)
      t.is(verify.code, 0, `round ${round}: ${verify.stdout}${verify.stderr}`)
    }
    // And the data seals completely afterwards.
    const sealed = await vdiskfs('sync', m.mnt)
    t.is(sealed.code, 0, sealed.stderr)
    await run('cmp', [source, disk])
  })
}
