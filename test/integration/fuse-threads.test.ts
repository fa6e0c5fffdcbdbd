/**
 * The daemon stays bounded under bursty parallel reads (issue #10): libfuse 2 starts a thread whenever
 * none is idle and ends threads when more than 10 are idle, and unpatched fuse-native gave every new
 * thread a new record with a libuv async handle it never freed, so the handles the event loop walks on
 * every wakeup grew by hundreds a round. Through a real mount, rounds of 16 parallel dd readers (page
 * cache dropped between rounds) must leave the number of thread records (the daemon's status reply)
 * flat after the first rounds. It failed before the patch in patches/fuse-native+2.2.6.patch. No timing
 * is asserted; docs/PERFORMANCE.md has the throughput measured with and without the patch.
 */
import test from 'ava'
import path from 'node:path'
import { call } from '../../src/control/client'
import { run, withMount } from '../helpers/mount'

const readers = 16
const rounds = 12
const warmupRounds = 3

async function threadRecords (mnt: string): Promise<number> {
  const status = await call(mnt, 'status') as { fuseThreadRecords?: number }
  if (typeof status.fuseThreadRecords !== 'number') throw new Error('the status reply has no fuseThreadRecords')
  return status.fuseThreadRecords
}

async function readRound (image: string): Promise<void> {
  await run('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches'])
  await Promise.all(Array.from({ length: readers }, async (_, i) =>
    await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=128k', `skip=${(i * 7) % 16}`, 'count=96', 'status=none'])))
}

test.serial('thread records stay flat over rounds of 16 parallel readers', async t => {
  const m = await withMount(t)
  const image = m.image('disks', 'read.img')
  const source = path.join(m.dir, 'source.raw')
  await run('dd', ['if=/dev/urandom', `of=${source}`, 'bs=1M', 'count=64', 'status=none'])
  await run('cp', [source, image])
  const counts: number[] = []
  for (let round = 0; round < rounds; round++) {
    await readRound(image)
    counts.push(await threadRecords(m.mnt))
  }
  t.log(`thread records after each round: ${counts.join(' ')}`)
  const afterWarmup = counts[warmupRounds - 1]
  const last = counts[counts.length - 1]
  // Patched: the most libfuse threads ever alive at once, a few dozen (a thread per request in flight:
  // at most max_background=64 readahead requests and the 16 readers' own, plus up to 10 idle threads).
  // Unpatched: about a hundred more every round.
  t.true(last - afterWarmup <= 64, `records grew from ${afterWarmup} to ${last} over ${rounds - warmupRounds} rounds`)
  t.true(last <= 128, `${last} thread records`)
})
