/**
 * Which backups prune keeps: the keep-rules of Proxmox Backup Server and restic, by creation time (UTC).
 * The remote's own copy: local prune (src/transfer, TRANSFER's) was not committed when this was written;
 * the two should become one function (docs/REMOTE.md says which semantics both follow).
 *
 * Backups are taken newest first. --keep-last N keeps the N newest. Then each period rule in turn
 * (hourly, daily, weekly, monthly, yearly) keeps the newest backup of each of the N most recent periods
 * that have one, skipping periods a backup kept by an earlier rule already covers. Everything not kept
 * is removed. No rule at all is an error (INVALID), so a bare prune never removes everything.
 */
import { invalid } from '../errors'

export interface KeepRules { last?: number, hourly?: number, daily?: number, weekly?: number, monthly?: number, yearly?: number }
export const keepRuleNames = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const

export interface Dated { createdMs: number }
export interface Selection<T> { item: T, keep: boolean, rule: string | null }

const periodOf: Record<Exclude<keyof KeepRules, 'last'>, (date: Date) => string> = {
  hourly: d => d.toISOString().slice(0, 13),
  daily: d => d.toISOString().slice(0, 10),
  weekly: d => isoWeek(d),
  monthly: d => d.toISOString().slice(0, 7),
  yearly: d => d.toISOString().slice(0, 4)
}

/** Each item with keep/remove and the rule that kept it, newest first. Errors: INVALID without any rule. */
export function selectKept<T extends Dated> (items: T[], rules: KeepRules): Array<Selection<T>> {
  if (!keepRuleNames.some(name => (rules[name] ?? 0) > 0)) throw invalid('give at least one --keep-* rule with a count above 0 (prune never removes every backup)')
  for (const name of keepRuleNames) {
    const count = rules[name]
    if (count !== undefined && (!Number.isSafeInteger(count) || count < 0)) throw invalid(`--keep-${name} needs a whole number`)
  }
  const sorted = [...items].sort((a, b) => b.createdMs - a.createdMs)
  const rule = new Map<T, string>()
  sorted.slice(0, rules.last ?? 0).forEach(item => rule.set(item, 'last'))
  for (const [name, key] of Object.entries(periodOf) as Array<[keyof typeof periodOf, (d: Date) => string]>) {
    const count = rules[name] ?? 0
    if (count === 0) continue
    const covered = new Set<string>()
    for (const item of sorted) if (rule.has(item)) covered.add(key(new Date(item.createdMs)))
    const chosen = new Set<string>()
    for (const item of sorted) {
      if (rule.has(item)) continue
      const period = key(new Date(item.createdMs))
      if (covered.has(period) || chosen.has(period)) continue
      if (chosen.size >= count) break
      chosen.add(period)
      rule.set(item, name)
    }
  }
  return sorted.map(item => ({ item, keep: rule.has(item), rule: rule.get(item) ?? null }))
}

/** ISO 8601 week, as YYYY-Www. */
function isoWeek (date: Date): string {
  const day = new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()))
  const weekday = day.getUTCDay() === 0 ? 7 : day.getUTCDay()
  day.setUTCDate(day.getUTCDate() + 4 - weekday)
  const yearStart = Date.UTC(day.getUTCFullYear(), 0, 1)
  const week = Math.ceil(((day.getTime() - yearStart) / 86400000 + 1) / 7)
  return `${day.getUTCFullYear()}-W${String(week).padStart(2, '0')}`
}

/** A shell-style glob (*, ?) as a test on names. */
export function globMatcher (glob: string): (name: string) => boolean {
  const pattern = new RegExp('^' + glob.split('').map(c => c === '*' ? '.*' : c === '?' ? '.' : c.replace(/[.+^${}()|[\]\\]/g, '\\$&')).join('') + '$')
  return name => pattern.test(name)
}
