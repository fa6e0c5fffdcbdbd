/**
 * verify: checks the catalog, every map page and entry, every delta extent a map points into and
 * every chunk's hash, and names the damaged volumes and byte ranges. It only reads. Runs online (in
 * the daemon, under the maintenance lock so compaction does not move chunks under it) or offline
 * (the CLI opens the pool itself, under the pool lock).
 */
import { entryChunkId, entryExtentId, entryKind, entryKindChunk, entryKindDelta, entryKindHole, entryKindLost, entrySlot } from '../format/map-format'
import { pageEntries } from '../limits'
import { Pool } from './pool'
import { Volume } from './volume'

export interface DamagedRange { volume: string, kind: string, startByte: number, endByte: number, problem: string }

export interface VerifyReport {
  ok: boolean
  volumes: number
  pages: number
  blocks: number
  extents: number
  chunks: number
  /** Problems of the pool itself (catalog, index). */
  problems: string[]
  damaged: DamagedRange[]
}

export interface Progress { done: number, total: number }

const verifyBatch = 8

export async function verifyPool (pool: Pool, progress: Progress = { done: 0, total: 0 }): Promise<VerifyReport> {
  const report: VerifyReport = { ok: true, volumes: 0, pages: 0, blocks: 0, extents: 0, chunks: 0, problems: [], damaged: [] }
  for (const problem of pool.catalog.integrityCheck()) report.problems.push(`catalog: ${problem}`)
  const blockBytes = pool.blockBytes
  // block references per chunk, for naming the volumes a damaged chunk hurts.
  const users = new Map<number, Array<{ volume: Volume, block: number }>>()
  const bad = new Map<Volume, Map<number, string>>()
  const mark = (volume: Volume, block: number, problem: string) => {
    let blocks = bad.get(volume)
    if (blocks === undefined) bad.set(volume, blocks = new Map())
    if (!blocks.has(block)) blocks.set(block, problem)
  }
  const extentSlots = new Map<number, number | string>()
  const volumes = pool.list()
  const chunkIds = pool.catalog.chunkIds()
  progress.total = volumes.length + chunkIds.length
  for (const volume of volumes) {
    report.volumes++
    const root = volume.map.root
    for (let p = 0; p < root.length; p++) {
      if (root[p] === 0) continue
      let entries: Float64Array
      try {
        entries = pool.pageStore.get(root[p]).entries
        report.pages++
      } catch (err) {
        const first = p * pageEntries
        for (let b = first; b < Math.min(first + pageEntries, Math.ceil(volume.size / blockBytes)); b++) mark(volume, b, (err as Error).message)
        continue
      }
      for (let i = 0; i < entries.length; i++) {
        const entry = entries[i]
        if (entry === 0) continue
        const block = p * pageEntries + i
        report.blocks++
        const kind = entryKind(entry)
        if (kind === entryKindDelta) {
          const extentId = entryExtentId(entry)
          let slots = extentSlots.get(extentId)
          if (slots === undefined) {
            try {
              slots = (await pool.extents.get(extentId)).nextSlot
              report.extents++
            } catch (err) { slots = (err as Error).message }
            extentSlots.set(extentId, slots)
          }
          if (typeof slots === 'string') mark(volume, block, slots)
          else if (entrySlot(entry) >= slots) mark(volume, block, `delta extent ${extentId} is shorter than slot ${entrySlot(entry)}`)
        } else if (kind === entryKindChunk) {
          const id = entryChunkId(entry)
          let list = users.get(id)
          if (list === undefined) users.set(id, list = [])
          list.push({ volume, block })
        } else if (kind === entryKindLost) {
          mark(volume, block, 'lost (quarantined by repair)')
        } else if (kind !== entryKindHole) {
          mark(volume, block, `unknown map entry kind ${kind}`)
        }
      }
    }
    progress.done++
  }
  // Every chunk in the index, referenced or not, read and checked against its hash.
  const indexed = new Set(chunkIds)
  for (const [id, list] of users) {
    if (!indexed.has(id)) for (const { volume, block } of list) mark(volume, block, `chunk ${id} is missing from the index`)
  }
  const damagedChunks = new Map<number, string>()
  for (let i = 0; i < chunkIds.length; i += verifyBatch) {
    const ids = chunkIds.slice(i, i + verifyBatch)
    for (const [id, why] of await pool.chunks.check(ids)) damagedChunks.set(id, why)
    report.chunks += ids.length
    progress.done += ids.length
  }
  for (const [id, why] of damagedChunks) {
    const list = users.get(id)
    if (list === undefined) report.problems.push(`chunk ${id} (unreferenced): ${why}`)
    else for (const { volume, block } of list) mark(volume, block, `chunk ${id}: ${why}`)
  }
  for (const [volume, blocks] of bad) {
    const sorted = [...blocks.entries()].sort((a, b) => a[0] - b[0])
    let start = sorted[0]
    let previous = sorted[0]
    const flush = (last: [number, string]) => report.damaged.push({
      volume: volume.name, kind: volume.kind, startByte: start[0] * blockBytes, endByte: Math.min(volume.size, (last[0] + 1) * blockBytes), problem: start[1]
    })
    for (const current of sorted.slice(1)) {
      if (current[0] === previous[0] + 1 && current[1] === previous[1]) { previous = current; continue }
      flush(previous)
      start = current
      previous = current
    }
    flush(previous)
  }
  report.ok = report.problems.length === 0 && report.damaged.length === 0
  return report
}

