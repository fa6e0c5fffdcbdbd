/**
 * Sealing and reading back through the chunk store, on the engine directly: a volume larger than the
 * slab (more blocks than slots) reads back whole in one call, and a second pool made at the same path
 * in the same process (extent and pack paths repeat) seals its own data, not the first pool's.
 * Both were bugs: the first deadlocked, the second read a deleted file through a cached descriptor.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { slabSlots } from '../../src/limits'

for (const workers of [0, 1]) {
  test.serial(`seal and read back more blocks than the slab holds, twice at one path (${workers} workers)`, async t => {
    const dir = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-seal-')), 'pool')
    t.teardown(() => fs.rmSync(path.dirname(dir), { recursive: true, force: true }))
    for (let round = 0; round < 2; round++) {
      fs.rmSync(dir, { recursive: true, force: true })
      const pool = Pool.open(dir, { create: true, blockBytes: 4096, workers })
      try {
        const disk = await pool.createDisk('d.img')
        const data = crypto.randomBytes((slabSlots * 3 + 5) * 4096)
        data.fill(0, 4096, 8192) // one zero block: a hole from the start, never sealed
        await disk.write(data, 0)
        const report = await new Sealer(pool, () => {}).sealPending(true)
        t.is(report.blocksSealed, slabSlots * 3 + 4)
        t.is(report.newChunks, slabSlots * 3 + 4)
        t.is(report.zeroBlocks, 0)
        const back = Buffer.alloc(data.length)
        await disk.read(back, 0)
        t.true(back.equals(data), `round ${round}: reads back what was written`)
      } finally {
        await pool.close()
      }
    }
  })
}
