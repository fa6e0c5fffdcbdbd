/**
 * Minimal cases the property test (engine-model.test.ts) shrank to, kept so they run every time.
 */
import test from 'ava'
import { Op, runOps } from '../helpers/model'

const cases: Array<{ title: string, ops: Op[] }> = [
  {
    // Found with copy-on-write of map pages disabled: a truncate after a backup changed the backup.
    title: 'truncate after a backup leaves the backup alone',
    ops: [{ op: 'write', vol: 0, offset: 0, length: 4096, zero: false, seed: 0 }, { op: 'backup', vol: 0 }, { op: 'truncate', vol: 0, size: 1 }]
  },
  {
    title: 'a clone written at a page boundary, then reopened, keeps its base unchanged',
    ops: [
      { op: 'write', vol: 0, offset: 16 * 1024 * 1024 - 100, length: 200, zero: false, seed: 1 },
      { op: 'backup', vol: 0 }, { op: 'clone', vol: 0 }, { op: 'reopen' },
      { op: 'write', vol: 0, offset: 16 * 1024 * 1024 - 50, length: 8192, zero: false, seed: 2 },
      { op: 'write', vol: 1, offset: 16 * 1024 * 1024 - 10, length: 20, zero: true, seed: 3 },
      { op: 'gc' }, { op: 'reopen' }
    ]
  },
  {
    title: 'restore then rm of the backup keeps the restored data through gc',
    ops: [
      { op: 'write', vol: 0, offset: 5000, length: 9000, zero: false, seed: 4 },
      { op: 'backup', vol: 0 }, { op: 'write', vol: 0, offset: 0, length: 16384, zero: false, seed: 5 },
      { op: 'restore', vol: 0, target: 0 }, { op: 'rm', vol: 0 }, { op: 'gc' }, { op: 'reopen' }
    ]
  }
]

for (const { title, ops } of cases) {
  test(title, async t => {
    t.is(await runOps(ops), null)
  })
}
