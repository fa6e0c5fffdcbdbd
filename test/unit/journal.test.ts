/**
 * The change journal (volume/journal.ts, replay.ts): a pool dropped without a commit, as a killed
 * daemon drops it, opens again with every change it had acknowledged (new slots, holes, sizes,
 * truncates, discards, shared ranges and the freeze they made), and a second death after the replay
 * loses nothing either. Committed journal files are deleted; a torn tail is ignored.
 */
import test from 'ava'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Pool } from '../../src/volume/pool'
import { Sealer } from '../../src/seal/sealer'
import { Volume } from '../../src/volume/volume'
import { verifyPool } from '../../src/inspect/verify'
import { bytesOf } from '../helpers/model'
import { FaultFileIo } from '../helpers/fault-io'
import { ChangeJournal } from '../../src/volume/journal'

const blockBytes = 4096

function tempDir (t: { teardown: (fn: () => void) => void }): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'vdiskfs-journal-'))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  return dir
}

async function contentOf (volume: Volume): Promise<Buffer> {
  const out = Buffer.alloc(volume.size)
  await volume.read(out, 0)
  return out
}

/** Opens the pool as the daemon does after an unclean stop: the journal replayed, then recover(). */
async function reopen (dir: string): Promise<Pool> {
  const pool = Pool.open(dir, { workers: 1 })
  await pool.recover()
  return pool
}

const journalNames = (dir: string): string[] => fs.readdirSync(dir).filter(name => name.startsWith('journal.')).sort()

for (const poolBlockBytes of [blockBytes, 16384]) {
  test(`a pool dropped without a commit keeps every change it acknowledged, twice over (${poolBlockBytes / 1024} KiB blocks)`, async t => {
    const dir = path.join(tempDir(t), 'pool')
    let pool = Pool.open(dir, { create: true, blockBytes: poolBlockBytes, workers: 1 })
    const a = await pool.createDisk('a.img')
    const b = await pool.createDisk('b.img')
    await a.write(bytesOf(1, 64 * poolBlockBytes), 0)
    await pool.commit()
    await new Sealer(pool, () => {}).sealPending(true)
    // Uncommitted from here: new blocks, overwrites (in place and over sealed chunks, partial), a whole
    // zero block, a discard, a grow past the end, a shrink, and a shared range (which freezes a's extent).
    await a.write(bytesOf(2, 8 * poolBlockBytes), 80 * poolBlockBytes)
    await a.write(bytesOf(3, 1000), 3 * poolBlockBytes + 512)
    await a.write(Buffer.alloc(poolBlockBytes), 10 * poolBlockBytes)
    await a.discard(20 * poolBlockBytes, 4 * poolBlockBytes)
    await b.write(bytesOf(4, 3 * poolBlockBytes + 17), 0)
    await b.truncate(2 * poolBlockBytes + 100)
    await pool.copyRange(a, b, 0, 8 * poolBlockBytes, 16 * poolBlockBytes)
    await a.write(bytesOf(5, poolBlockBytes), 0) // after the share: must not change b
    const expected = { a: await contentOf(a), b: await contentOf(b) }
    t.true(journalNames(dir).length > 0, 'changes since the commit are in a journal file')
    await pool.abandon()

    pool = await reopen(dir)
    t.true(pool.replayedChanges > 0)
    t.true((await contentOf(pool.get('disk', 'a.img'))).equals(expected.a), 'a after the first replay')
    t.true((await contentOf(pool.get('disk', 'b.img'))).equals(expected.b), 'b after the first replay')
    // New writes after the replay go to new slots: the replayed ones keep their bytes.
    await pool.get('disk', 'a.img').write(bytesOf(6, 2 * poolBlockBytes), 100 * poolBlockBytes)
    const grown = Buffer.alloc(102 * poolBlockBytes)
    expected.a.copy(grown)
    bytesOf(6, 2 * poolBlockBytes).copy(grown, 100 * poolBlockBytes)
    expected.a = grown
    t.true((await contentOf(pool.get('disk', 'b.img'))).equals(expected.b), 'b unchanged by a\'s new writes')
    // Dropped again before any commit: the replayed changes and the new ones come back.
    await pool.abandon()
    pool = await reopen(dir)
    t.true((await contentOf(pool.get('disk', 'a.img'))).equals(expected.a), 'a after the second replay')
    t.true((await contentOf(pool.get('disk', 'b.img'))).equals(expected.b), 'b after the second replay')
    await pool.commit()
    t.deepEqual(journalNames(dir), [], 'a commit deletes the journal files it holds')
    await new Sealer(pool, () => {}).sealPending(true)
    await pool.gc(0.99)
    t.true((await contentOf(pool.get('disk', 'a.img'))).equals(expected.a))
    t.true((await contentOf(pool.get('disk', 'b.img'))).equals(expected.b))
    t.true((await verifyPool(pool)).ok, 'verify is clean')
    await pool.close()
    t.deepEqual(journalNames(dir), [], 'a clean close leaves no journal file')
  })
}

test('a torn record at a journal\'s end ends the replay there; the records before it are applied', async t => {
  const dir = path.join(tempDir(t), 'pool')
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  const a = await pool.createDisk('a.img')
  await pool.commit()
  const data = bytesOf(1, 4 * blockBytes)
  await a.write(data, 0)
  await pool.abandon()
  const [name] = journalNames(dir)
  fs.appendFileSync(path.join(dir, name), Buffer.from('a torn record, not 32 bytes of a whole one'))
  pool = await reopen(dir)
  t.true((await contentOf(pool.get('disk', 'a.img'))).equals(data))
  await pool.close()
})

test('without the journal a dropped pool loses the changes since its commit (the journal is what keeps them)', async t => {
  const dir = path.join(tempDir(t), 'pool')
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  const a = await pool.createDisk('a.img')
  await pool.commit()
  await a.write(bytesOf(1, 4 * blockBytes), 0)
  await pool.abandon()
  for (const name of journalNames(dir)) fs.rmSync(path.join(dir, name))
  pool = await reopen(dir)
  t.is(pool.get('disk', 'a.img').size, 0, 'the write is gone with the journal: this test would pass without one only if writes were committed')
  await pool.close()
})

test('a journal written before the machine restarted is not replayed: the pool starts from its last commit, as after any power cut', async t => {
  const dir = path.join(tempDir(t), 'pool')
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1 })
  const a = await pool.createDisk('a.img')
  const committed = bytesOf(1, 4 * blockBytes)
  await a.write(committed, 0)
  await pool.commit()
  const later = bytesOf(2, 8 * blockBytes)
  await a.write(later, 0)
  await pool.abandon()
  const messages: string[] = []
  pool = Pool.open(dir, { workers: 1, bootId: Buffer.from('0123456789abcdef0123456789abcdef', 'hex'), log: m => messages.push(m) })
  await pool.recover()
  t.is(pool.replayedChanges, 0)
  // The committed size and map: the 4 blocks overwritten in place may hold either write, the 4 the
  // journal would have added are not there.
  const got = await contentOf(pool.get('disk', 'a.img'))
  t.is(got.length, committed.length, 'the committed size, not the journal\'s')
  for (let block = 0; block < 4; block++) {
    const piece = got.subarray(block * blockBytes, (block + 1) * blockBytes)
    t.true(piece.equals(committed.subarray(block * blockBytes, (block + 1) * blockBytes)) || piece.equals(later.subarray(block * blockBytes, (block + 1) * blockBytes)), `block ${block}`)
  }
  t.true(messages.some(m => /written before the machine restarted/.test(m)), messages.join('\n'))
  await pool.commit()
  t.deepEqual(journalNames(dir), [], 'the next commit deletes the old boot\'s file')
  await pool.close()
})

test('after a failed fdatasync the journal is dropped: a daemon killed then starts from the last good commit, not from entries whose pages the kernel may have lost', async t => {
  const dir = path.join(tempDir(t), 'pool')
  const io = new FaultFileIo()
  let pool = Pool.open(dir, { create: true, blockBytes, workers: 1, io })
  const a = await pool.createDisk('a.img')
  const committed = bytesOf(1, 4 * blockBytes)
  await a.write(committed, 0)
  await pool.commit()
  await a.write(bytesOf(2, 4 * blockBytes), 16 * blockBytes)
  io.failSyncAt = io.syncs + 1
  await t.throwsAsync(pool.commit())
  await a.write(bytesOf(3, 4 * blockBytes), 32 * blockBytes)
  t.deepEqual(journalNames(dir), [], 'no journal file after the failure')
  await pool.abandon()
  pool = await reopen(dir)
  t.is(pool.replayedChanges, 0)
  t.is(pool.get('disk', 'a.img').size, committed.length, 'the last good commit\'s size')
  await pool.close()
})

test('a journal that cannot be written says so once and calls its failure handler once (the daemon then stops its holder)', t => {
  const lines: string[] = []
  const journal = new ChangeJournal(path.join(tempDir(t), 'missing', 'dir'), 0, line => lines.push(line))
  let failures = 0
  journal.onFailure = () => { failures++ }
  journal.entry(1, 2, 3)
  journal.size(1, 4096)
  t.is(failures, 1)
  t.true(lines.length >= 1 && /the change journal could not be written/.test(lines[0]), lines.join('\n'))
})
