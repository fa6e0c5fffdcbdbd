/**
 * The FUSE READ reply buffers (fuse/fuse3-ops.ts ReadBuffers): a buffer given back is taken again for a
 * read of its size class, views have the size asked for, and what is too large or not from the pool is
 * never kept.
 */
import test from 'ava'
import { ReadBuffers } from '../../src/fuse/fuse3-ops'

test('a buffer given back serves the next read of its size class, as a view of the size asked', t => {
  const buffers = new ReadBuffers(2)
  const first = buffers.take(100_000)
  t.is(first.view.length, 100_000)
  t.is(first.whole.length, 131072)
  buffers.give(first.whole)
  const second = buffers.take(131072)
  t.is(second.whole, first.whole, 'the same memory')
  t.is(second.view.length, 131072)
  const other = buffers.take(131072)
  t.not(other.whole, first.whole, 'one taken is not handed out twice')
})

test('at most perSize buffers of a class are kept; larger reads and foreign buffers are not pooled', t => {
  const buffers = new ReadBuffers(1, 1 << 20)
  const a = buffers.take(4096)
  const b = buffers.take(4096)
  buffers.give(a.whole)
  buffers.give(b.whole)
  t.is(buffers.take(4096).whole, a.whole)
  t.not(buffers.take(4096).whole, b.whole, 'the second was not kept')
  const big = buffers.take((1 << 20) + 1)
  t.is(big.view.length, (1 << 20) + 1)
  buffers.give(big.whole)
  t.not(buffers.take((1 << 20) + 1).whole, big.whole)
  buffers.give(Buffer.alloc(5000))
  t.is(buffers.take(5000).whole.length, 8192, 'a buffer of no class is not taken in')
})
