/**
 * The pool's table of volumes by kind and name (issue #21: a look-up by name walked every volume, 1.8 ms
 * per backup's name check and per FUSE LOOKUP at 10,000 backups). After every operation of a random
 * sequence (create, backup, clone, rename of each kind, promote, rm), find() answers what a walk of
 * every volume answers, for every name the sequence used.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { VolumeKind } from '../../src/catalog/catalog'

const kinds: VolumeKind[] = ['disk', 'backup', 'clone']

test('find() by kind and name agrees with a walk of every volume through creates, renames, promotes and removes', async t => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-names-'))
  let pool = Pool.open(path.join(dir, 'pool'), { create: true, blockBytes: 4096, workers: 0 })
  try {
    let seed = 12345
    const next = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed % n }
    const names = Array.from({ length: 12 }, (_, i) => `v${i}.img`)
    const check = (when: string): void => {
      for (const kind of kinds) {
        for (const name of names) {
          const walked = pool.list(kind).find(v => v.name === name)
          t.is(pool.find(kind, name), walked, `${when}: ${kind} ${name}`)
        }
      }
    }
    const pick = (kind: VolumeKind) => { const all = pool.list(kind); return all.length === 0 ? undefined : all[next(all.length)] }
    for (let step = 0; step < 300; step++) {
      const op = next(7)
      const name = names[next(names.length)]
      try {
        if (op === 0) await pool.createDisk(name)
        else if (op === 1) { const d = pick('disk'); if (d !== undefined) await pool.backup(d, name) }
        else if (op === 2) { const b = pick('backup'); if (b !== undefined) await pool.clone(b, name) }
        else if (op === 3) { const v = pick(kinds[next(3)]); if (v !== undefined) await pool.renameVolume(v, name) }
        else if (op === 4) { const c = pick('clone'); if (c !== undefined) await pool.promote(c, name) }
        else if (op === 5) { const v = pick(kinds[next(3)]); if (v !== undefined) await pool.remove(v) }
        else {
          await pool.close()
          // eslint-disable-next-line require-atomic-updates -- the sequence is this test's only user of `pool`
          pool = Pool.open(path.join(dir, 'pool'), { workers: 0 })
        }
      } catch (err) {
        if (!['EXISTS', 'BUSY', 'INVALID', 'NOT_FOUND'].includes((err as { code?: string }).code ?? '')) throw err
      }
      check(`step ${step} (op ${op}, ${name})`)
    }
    t.true(pool.list().length > 5, `volumes at the end: ${pool.list().length}`)
  } finally {
    await pool.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
})
