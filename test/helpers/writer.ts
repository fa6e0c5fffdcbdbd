/**
 * A writer process for the concurrency test: writes self-describing records (records.ts) to random
 * ranges of one image and logs every write with its start and end on the system-wide monotonic clock.
 * Usage: node writer.js FILE WRITER_ID WRITES RECORDS LOG
 */
import fs from 'node:fs'
import { makeRecord, recordBytes } from './records'

const [file, idText, writesText, recordsText, logFile] = process.argv.slice(2)
const id = Number(idText)
const records = Number(recordsText)
const fd = fs.openSync(file, 'r+')
const lines: string[] = []
for (let seq = 1; seq <= Number(writesText); seq++) {
  const count = 1 + Math.floor(Math.random() * 4)
  const first = Math.floor(Math.random() * (records - count))
  const generation = id * 1_000_000 + seq
  const data = Buffer.alloc(count * recordBytes)
  for (let i = 0; i < count; i++) makeRecord(data, i * recordBytes, first + i, generation)
  const start = process.hrtime.bigint()
  fs.writeSync(fd, data, 0, data.length, first * recordBytes)
  const end = process.hrtime.bigint()
  lines.push(`${first} ${count} ${generation} ${start} ${end}`)
}
fs.closeSync(fd)
fs.writeFileSync(logFile, lines.join('\n') + '\n')
