/**
 * The stores behind a Pool (extents, chunks, map pages, the catalog), for tests that look at them
 * directly (descriptor counts, cache figures, a chunk's pack). The Pool keeps them private so that
 * nothing in src/ reaches past it; tests reach them only through this one cast.
 */
import { Pool } from '../../src/volume/pool'
import { PoolState } from '../../src/volume/pool-state'

export function storesOf (pool: Pool): PoolState {
  return (pool as unknown as { state: PoolState }).state
}
