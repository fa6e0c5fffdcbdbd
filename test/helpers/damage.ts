/**
 * Damage for the integrity tests: flips bits of one byte of a file in place, as bit rot would.
 */
import fs from 'node:fs'

/** XORs the byte at `at` of `file` with `mask`. */
export function flipByte (file: string, at: number, mask = 0x01): void {
  const fd = fs.openSync(file, 'r+')
  try {
    const byte = Buffer.alloc(1)
    fs.readSync(fd, byte, 0, 1, at)
    byte[0] ^= mask
    fs.writeSync(fd, byte, 0, 1, at)
  } finally {
    fs.closeSync(fd)
  }
}
