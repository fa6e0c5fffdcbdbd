/**
 * Bounded concurrency: the one lane loop that the sealer, the importer and the remote store use to run
 * at most `limit` pieces of work at a time (issue #19: it was written three times).
 */

/**
 * Runs `work` on every item, `limit` at a time, in order of the items. The first error stops new work;
 * the work in flight settles, then the error is thrown (so a caller can index or drop what was stored).
 */
export async function forEachLimited<T> (items: T[], limit: number, work: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  let failed: unknown = null
  const runner = async (): Promise<void> => {
    while (failed === null && next < items.length) {
      const item = items[next++]
      try { await work(item) } catch (err) { failed ??= err }
    }
  }
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, runner))
  if (failed !== null) throw failed
}
