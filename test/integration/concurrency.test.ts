/**
 * Concurrency (issue #5): four processes write overlapping ranges of one image while backups are taken
 * and a clone of an earlier backup is read over and over. Checked against a model: every record holds
 * a value some write put there and that no later write (one that started after it ended) replaced;
 * each backup holds, for every record, a value no write that had ended before the backup started had
 * replaced; the clone never changes.
 */
import test from 'ava'
import crypto from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { spawn } from 'node:child_process'
import { run, vdiskfs, withMount } from '../helpers/mount'
import { readRecord, recordBytes } from '../helpers/records'

interface Write { first: number, count: number, generation: number, start: bigint, end: bigint }

const records = 2048
const writers = 4
const writesEach = 1500

function hash (file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex')
}

/** For each record, the writes that touched it. */
function byRecord (writes: Write[]): Map<number, Write[]> {
  const out = new Map<number, Write[]>()
  for (const w of writes) for (let r = w.first; r < w.first + w.count; r++) { const list = out.get(r) ?? []; list.push(w); out.set(r, list) }
  return out
}

/** Problems with `image` as a state of the records at time `at` (all writes ended before `at` count). */
function check (image: Buffer, touched: Map<number, Write[]>, at: bigint | null): string[] {
  const problems: string[] = []
  for (let r = 0; r < records; r++) {
    const state = readRecord(image, r * recordBytes, r)
    if (state.kind === 'bad') { problems.push(`record ${r}: ${state.why}`); continue }
    const list = touched.get(r) ?? []
    const ended = list.filter(w => at === null || w.end < at)
    if (state.kind === 'zero') {
      if (ended.length > 0) problems.push(`record ${r} is zero though ${ended.length} writes to it had ended`)
      continue
    }
    const mine = list.find(w => w.generation === state.generation)
    if (mine === undefined) { problems.push(`record ${r} holds generation ${state.generation}, never written there`); continue }
    const newer = ended.find(w => w.start > mine.end)
    if (newer !== undefined) problems.push(`record ${r} holds generation ${state.generation}, replaced by ${newer.generation} before the check`)
  }
  return problems
}

test.serial('overlapping writers, backups under load and clone reads agree with the model', async t => {
  const m = await withMount(t)
  const disk = m.image('disks', 'shared.img')
  await run('truncate', ['-s', String(records * recordBytes), disk])
  // A backup and a clone of the disk before the storm: the clone must not change while it runs.
  fs.writeFileSync(disk, crypto.randomBytes(records * recordBytes))
  t.is((await vdiskfs('backup', disk, 'before')).code, 0)
  t.is((await vdiskfs('clone', m.image('backups', 'before.img'), 'reader')).code, 0)
  const clone = m.image('clones', 'reader.img')
  const cloneHash = hash(clone)
  fs.writeFileSync(disk, Buffer.alloc(records * recordBytes))
  const writerScript = path.join(__dirname, '..', 'helpers', 'writer.js')
  const logs = Array.from({ length: writers }, (_, i) => path.join(m.dir, `writer${i}.log`))
  const children = logs.map((log, i) => spawn(process.execPath, [writerScript, disk, String(i + 1), String(writesEach), String(records), log], { stdio: 'inherit' }))
  const done = children.map(async child => await new Promise<number>(resolve => child.on('exit', code => resolve(code ?? 1))))
  let finished = false
  void Promise.all(done).then(() => { finished = true })
  const backups: Array<{ file: string, startedAt: bigint }> = []
  let cloneReads = 0
  while (!finished) {
    const startedAt = process.hrtime.bigint()
    const name = `load${backups.length}`
    if (backups.length < 5 && (await vdiskfs('backup', disk, name)).code === 0) backups.push({ file: m.image('backups', `${name}.img`), startedAt })
    t.is(hash(clone), cloneHash, 'the clone does not change while its source is written')
    cloneReads++
    await new Promise(resolve => setTimeout(resolve, 10))
  }
  t.deepEqual(await Promise.all(done), Array(writers).fill(0))
  const writes: Write[] = []
  for (const log of logs) {
    for (const line of fs.readFileSync(log, 'utf8').trim().split('\n')) {
      const [first, count, generation, start, end] = line.split(' ')
      writes.push({ first: Number(first), count: Number(count), generation: Number(generation), start: BigInt(start), end: BigInt(end) })
    }
  }
  const touched = byRecord(writes)
  t.deepEqual(check(fs.readFileSync(disk), touched, null).slice(0, 5), [], 'the disk')
  for (const backup of backups) t.deepEqual(check(fs.readFileSync(backup.file), touched, backup.startedAt).slice(0, 5), [], path.basename(backup.file))
  t.true(backups.length >= 1, 'at least one backup was taken under load')
  t.log(`${writes.length} writes by ${writers} processes, ${backups.length} backups under load, ${cloneReads} full reads of the clone`)
})
