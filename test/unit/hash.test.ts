/**
 * The workers' BLAKE3 helper keeps no native memory per call (issue #10): @napi-rs/blake-hash's
 * blake3() leaked about 350 bytes for every digest it returned, which made a daemon serving sealed
 * chunks grow without bound (docs/PERFORMANCE.md). With the helper calling blake3() this failed
 * (+34 MiB over 100,000 calls); it also checks the digest against a known BLAKE3 value.
 */
import test from 'ava'
import v8 from 'node:v8'
import vm from 'node:vm'
import { blake3Digest } from '../../workers/hash'

v8.setFlagsFromString('--expose-gc')
const gc = vm.runInNewContext('gc') as () => void

test('blake3Digest gives the BLAKE3-256 digest', t => {
  // BLAKE3 of the empty input (the reference implementation's test vector).
  t.is(blake3Digest(Buffer.alloc(0)).toString('hex'), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262')
  t.is(blake3Digest(Buffer.alloc(65536, 7)).length, 32)
})

test('100,000 digests keep no native memory', t => {
  const input = Buffer.alloc(4096, 1)
  for (let i = 0; i < 10000; i++) blake3Digest(input)
  gc()
  const before = process.memoryUsage.rss()
  for (let round = 0; round < 10; round++) {
    for (let i = 0; i < 10000; i++) blake3Digest(input)
    gc()
  }
  const grownMiB = (process.memoryUsage.rss() - before) / 1048576
  t.log(`RSS grew ${grownMiB.toFixed(1)} MiB over 100,000 digests`)
  t.true(grownMiB < 12, `RSS grew ${grownMiB.toFixed(1)} MiB`)
})
