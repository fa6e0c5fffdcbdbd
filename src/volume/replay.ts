/**
 * Replays the change journal (journal.ts) when a pool opens: the map entries, sizes and freezes a
 * daemon made after its last commit, in the order it made them, over the committed state the catalog
 * holds. Then every volume's active extent is frozen: an extent's next slot comes from its file's size,
 * which a power cut may have cut short, and a new slot must never land where a replayed entry points.
 * The extents created after the last commit become suspect (their checksums are recomputed by
 * recover(), as for the extents that were writable at the last commit).
 *
 * Only files written in this boot are replayed (journal.ts: the journal is never synced).
 * Records that name a volume or an extent the catalog does not have (a volume removed, an extent whose
 * row a power cut lost) are skipped: the block keeps its committed entry.
 */
import { entryExtentId, entryKind, entryKindDelta } from '../format/map-format'
import { JournalKind, journalFiles, readJournal } from './journal'
import { PoolState } from './pool-state'

/** Applies the journal files from the catalog's journal_seq on; returns the records applied. */
export function replayJournal (state: PoolState): number {
  const journal = state.journal
  const files = journalFiles(state.dir)
  if (files.length === 0) return 0
  const extents = new Set(state.catalog.extents().map(e => e.id))
  let applied = 0
  let skipped = 0
  let otherBoot = false
  journal.enabled = false
  try {
    for (const { seq, file } of files) {
      journal.adopt(seq)
      if (seq < journal.seq) continue // committed already: deleted at the next commit
      const records = readJournal(file, journal.bootId)
      if (records === null) {
        if (!otherBoot) state.log('recovery: the change journal was written before the machine restarted: not replayed (it is never synced, so it may point at bytes a power cut lost); the pool starts from its last commit')
        otherBoot = true
        continue
      }
      for (const record of records) {
        const volume = record.kind === JournalKind.Extent ? undefined : state.volumes.get(record.a)
        if (record.kind === JournalKind.Extent) {
          if (extents.has(record.a)) { state.extents.suspect.add(record.a); applied++ } else skipped++
          continue
        }
        if (volume === undefined) { skipped++; continue }
        if (record.kind === JournalKind.Size) {
          volume.replaySize(record.b)
        } else if (record.kind === JournalKind.Freeze) {
          state.freezeActiveExtent(volume)
        } else {
          const block = record.b
          const entry = record.c
          if (block >= Math.ceil(volume.size / state.blockBytes) || (entryKind(entry) === entryKindDelta && !extents.has(entryExtentId(entry)))) { skipped++; continue }
          volume.map.set(block, entry)
        }
        volume.rowDirty = true
        applied++
      }
    }
    // New changes go to a file after every replayed one, so that a second replay keeps the order.
    journal.seq = Math.max(journal.seq, files[files.length - 1].seq + 1)
    if (applied > 0) {
      for (const volume of state.volumes.values()) state.freezeActiveExtent(volume)
      state.changed()
      state.log(`recovery: the daemon before stopped without committing ${applied} changes (map entries, sizes) it had made; replayed from the change journal${skipped > 0 ? ` (${skipped} naming what the catalog no longer has skipped)` : ''}`)
    }
  } finally {
    journal.enabled = true
  }
  return applied
}
