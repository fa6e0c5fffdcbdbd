/**
 * Catalog growth (issue #9): 3,000 one-byte writes, each followed by fsync (a commit that rewrites a
 * 32 KiB map page each time), leave the catalog and its WAL a few MB, not hundreds: to new blocks, and
 * as `dd` without conv=notrunc does them (truncate to the offset, then write), which dropped a page and
 * made a new one every time.
 */
import test from 'ava'
import fs from 'node:fs'
import path from 'node:path'
import { withMount } from '../helpers/mount'

test.serial('2 x 3,000 one-byte writes with fsync keep the catalog and its WAL under 4 MiB', async t => {
  const m = await withMount(t)
  const fd = fs.openSync(m.image('disks', 'small.img'), 'w')
  const one = Buffer.from('x')
  for (let i = 0; i < 3000; i++) {
    fs.writeSync(fd, one, 0, 1, i * 65536)
    fs.fsyncSync(fd)
  }
  fs.closeSync(fd)
  // dd of=IMAGE bs=1 seek=N conv=fsync, 3,000 times at random offsets within 4 GiB.
  const ddFd = fs.openSync(m.image('disks', 'dd.img'), 'w')
  let seed = 7
  for (let i = 0; i < 3000; i++) {
    seed = (seed * 1103515245 + 12345) % 2147483648
    const position = (seed % 65536) * 65536
    fs.ftruncateSync(ddFd, position)
    fs.writeSync(ddFd, one, 0, 1, position)
    fs.fsyncSync(ddFd)
  }
  fs.closeSync(ddFd)
  const size = (name: string) => { try { return fs.statSync(path.join(m.pool, name)).size } catch { return 0 } }
  const catalog = size('catalog.sqlite')
  const wal = size('catalog.sqlite-wal')
  t.log(`catalog ${catalog} bytes, WAL ${wal} bytes`)
  t.true(catalog + wal < 4 * 1024 * 1024, `catalog ${catalog} + WAL ${wal} bytes`)
  const data = fs.readFileSync(m.image('disks', 'small.img'))
  for (let i = 0; i < 3000; i++) if (data[i * 65536] !== 0x78) { t.fail(`byte ${i * 65536}`); break }
})
