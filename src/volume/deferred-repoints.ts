/**
 * A seal pass's repoints left to the pass's own commit (issue #21: a backup beside a seal pass carried
 * the pass's work, the pages it repointed and the rows of every volume reading them, 68-94 ms against
 * ~20 ms alone). docs/CONCURRENCY.md, "A seal pass's repoints wait for its own commit", gives the
 * argument; in short: the catalog always holds a consistent state, the committed pages and, for every
 * committed root, counters that count exactly those pages.
 *
 * - While a pass runs (PoolState.repointsDeferred), its repoint of a clean page changes the page in
 *   memory only (PageStore.markRepointed: kept in memory, not dirty; Page.deferred says what it changed
 *   in each reader's counters), and the readers are marked rowDeferred, not rowDirty.
 * - Another commit (a backup's) writes no such page, and every row it writes counts the committed page,
 *   not the repointed one: its counters less the deferred changes of the pages its root names
 *   (`forCommit`'s adjustment); such a row is marked rowDeferred again.
 * - A deferred page a write changed since (dirty now) is written by that commit as any dirty page: its
 *   repoints are then committed, so every volume whose root names it has its row written too.
 * - The pass's commit (`full`), a commit outside a pass, while closing or with gc's decision makes every
 *   deferred page dirty and every rowDeferred row dirty: they are committed as before. The pass drops
 *   an extent only after its own commit returns, so no extent a committed page names is deleted.
 */
import { PageChange } from '../map/page-store'
import { PoolState } from './pool-state'
import { Volume } from './volume'

/** What a commit subtracts from a volume's counters for the repoints it leaves out (null: nothing). */
export type CountsAdjustment = (volume: Volume) => PageChange | null

const none: CountsAdjustment = () => null

/**
 * Called in a commit's snapshot step, before it takes the dirty pages and rows. `full`: the commit
 * carries every deferred repoint (the pass's commit). Returns the adjustment of the rows it writes.
 */
export function forCommit (state: PoolState, full: boolean): CountsAdjustment {
  const pages = state.pages
  const partial = !full && state.repointsDeferred && state.lifecycle === 'open' && state.atCommitSnapshot === null
  const listed = pages.deferredList()
  const placed = listed.map(page => ({ page, slot: pages.slotOf(page.id) }))
  if (!partial || placed.some(p => p.slot === undefined)) {
    undeferAll(state)
    return none
  }
  const left: Array<{ id: number, slot: number, change: PageChange }> = []
  for (const { page, slot } of placed) {
    const at = slot as number
    if (!page.dirty) { left.push({ id: page.id, slot: at, change: page.deferred as PageChange }); continue }
    // Changed by a write since: written now with its repoints, so every reader's row counts them.
    pages.undefer(page)
    for (const volume of state.volumes.values()) {
      if (volume.map.epoch < page.epoch) continue // it cannot name the page (Maintenance.countPageChanges), nor is its root read
      const root = volume.map.root
      if (at < root.length && root[at] === page.id) volume.rowDirty = true
    }
  }
  if (left.length === 0) return none
  return volume => {
    const root = volume.map.root
    let freed = 0
    let stored = 0
    let names = false
    for (const { id, slot, change } of left) {
      if (slot >= root.length || root[slot] !== id) continue
      names = true
      freed += change.freed
      stored += change.stored
    }
    if (!names) return null
    volume.rowDeferred = true
    return { freed, stored }
  }
}

/** Every deferred repoint becomes an ordinary change: the next commit writes its pages and rows. */
export function undeferAll (state: PoolState): void {
  if (state.pages.deferredList().length > 0) state.changedSinceCommit = true
  state.pages.undeferAll()
  for (const volume of state.volumes.values()) {
    if (!volume.rowDeferred) continue
    volume.rowDeferred = false
    volume.rowDirty = true
    state.changedSinceCommit = true
  }
}
