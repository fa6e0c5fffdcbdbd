/**
 * Self-describing 4 KiB records for crash tests: each holds a magic, its record number, a generation
 * and a fill that depends on both, so a reader can tell a valid record from a torn, foreign or stale one.
 */
export const recordBytes = 4096
const magic = 0x5644_5243 // "VDRC"

export function makeRecord (target: Buffer, offset: number, index: number, generation: number): void {
  target.writeUInt32LE(magic, offset)
  target.writeUInt32LE(index, offset + 4)
  target.writeUInt32LE(generation, offset + 8)
  let x = (index * 2654435761 + generation * 40503) >>> 0
  for (let i = 12; i < recordBytes; i += 4) {
    x = (x ^ (x << 13)) >>> 0; x = (x ^ (x >>> 17)) >>> 0; x = (x ^ (x << 5)) >>> 0
    target.writeUInt32LE(x, offset + i)
  }
}

export type RecordState = { kind: 'zero' } | { kind: 'valid', generation: number } | { kind: 'bad', why: string }

export function readRecord (source: Buffer, offset: number, index: number): RecordState {
  let allZero = true
  for (let i = 0; i < recordBytes; i += 8) if (source.readBigUInt64LE(offset + i) !== 0n) { allZero = false; break }
  if (allZero) return { kind: 'zero' }
  if (source.readUInt32LE(offset) !== magic) return { kind: 'bad', why: 'no magic (torn or garbage)' }
  const storedIndex = source.readUInt32LE(offset + 4)
  if (storedIndex !== index) return { kind: 'bad', why: `foreign record ${storedIndex}` }
  const generation = source.readUInt32LE(offset + 8)
  const expected = Buffer.alloc(recordBytes)
  makeRecord(expected, 0, index, generation)
  if (!expected.equals(source.subarray(offset, offset + recordBytes))) return { kind: 'bad', why: `torn record (generation ${generation})` }
  return { kind: 'valid', generation }
}
