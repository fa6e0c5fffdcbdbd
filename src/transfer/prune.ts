/**
 * Which backups `vdiskfs prune` keeps: Proxmox Backup Server's retention algorithm (pbs-datastore
 * prune.rs, mark_selections), by creation time in UTC. Pure: no pool, no clock.
 *
 * Backups are grouped (by the volume they were taken from) and each group is pruned on its own.
 * In a group, newest first, the rules run in this order: last, hourly, daily, weekly, monthly, yearly.
 * A rule with N keeps the newest backup of each of the N most recent periods (an hour, a UTC day, an
 * ISO week, a month, a year; `last`: each backup is its own period) that no earlier rule already kept
 * a backup in; the other backups of a period it keeps one of are removed (a later rule cannot keep
 * them), and periods already covered are skipped without counting. What no rule keeps is removed.
 * So the newest backup of a group is always kept by the first rule with N > 0; with no such rule
 * nothing is chosen at all (the caller refuses).
 */

export const pruneRules = ['last', 'hourly', 'daily', 'weekly', 'monthly', 'yearly'] as const
export type PruneRule = typeof pruneRules[number]
export type PruneKeep = Partial<Record<PruneRule, number>>

export interface PruneCandidate { id: number, name: string, createdMs: number, group: string }
export interface PruneDecision extends PruneCandidate { keep: boolean, rule: PruneRule | null }

/** Whether `keep` asks to keep anything (some rule with N > 0). */
export function keepsAnything (keep: PruneKeep): boolean {
  return pruneRules.some(rule => (keep[rule] ?? 0) > 0)
}

function pad (n: number, width = 2): string { return String(n).padStart(width, '0') }

/** ISO 8601 week of a UTC date: "YYYY-Www" with the ISO week-numbering year. */
export function isoWeek (ms: number): string {
  const date = new Date(ms)
  const day = (date.getUTCDay() + 6) % 7 // Monday 0 .. Sunday 6
  // The Thursday of this week decides the ISO year.
  const thursday = Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate() - day + 3)
  const year = new Date(thursday).getUTCFullYear()
  const week = 1 + Math.floor((thursday - Date.UTC(year, 0, 1)) / (7 * 86400000))
  return `${year}-W${pad(week)}`
}

/** The period of `rule` that a backup created at `ms` falls in. */
export function periodOf (rule: PruneRule, candidate: PruneCandidate): string {
  const d = new Date(candidate.createdMs)
  const day = `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}-${pad(d.getUTCDate())}`
  switch (rule) {
    case 'last': return `#${candidate.id}`
    case 'hourly': return `${day}T${pad(d.getUTCHours())}`
    case 'daily': return day
    case 'weekly': return isoWeek(candidate.createdMs)
    case 'monthly': return `${d.getUTCFullYear()}-${pad(d.getUTCMonth() + 1)}`
    case 'yearly': return String(d.getUTCFullYear())
  }
}

/** Decides every candidate: kept (and by which rule) or removed. Newest first in the result, by group. */
export function selectPrune (candidates: PruneCandidate[], keep: PruneKeep): PruneDecision[] {
  const groups = new Map<string, PruneCandidate[]>()
  for (const c of candidates) groups.set(c.group, [...(groups.get(c.group) ?? []), c])
  const out: PruneDecision[] = []
  for (const group of [...groups.keys()].sort()) {
    // Newest first; equal times by id, the later one first.
    const list = (groups.get(group) as PruneCandidate[]).slice().sort((a, b) => b.createdMs - a.createdMs || b.id - a.id)
    const marks = new Map<number, { keep: boolean, rule: PruneRule | null }>()
    for (const rule of pruneRules) {
      const n = keep[rule] ?? 0
      if (n <= 0) continue
      const covered = new Set(list.filter(c => marks.get(c.id)?.keep === true).map(c => periodOf(rule, c)))
      const included = new Set<string>()
      for (const c of list) {
        if (marks.has(c.id)) continue
        const period = periodOf(rule, c)
        if (covered.has(period)) continue
        if (!included.has(period)) {
          if (included.size >= n) break
          included.add(period)
          marks.set(c.id, { keep: true, rule })
        } else {
          marks.set(c.id, { keep: false, rule: null })
        }
      }
    }
    for (const c of list) out.push({ ...c, ...(marks.get(c.id)?.keep === true ? marks.get(c.id) as { keep: boolean, rule: PruneRule } : { keep: false, rule: null }) })
  }
  return out
}

/** A shell-style glob (`*`, `?`, `[...]`) as a whole-name regular expression. */
export function globPattern (glob: string): RegExp {
  let out = ''
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i]
    if (c === '*') out += '.*'
    else if (c === '?') out += '.'
    else if (c === '[') {
      const end = glob.indexOf(']', i + 2)
      if (end < 0) out += '\\['
      else { out += `[${glob.slice(i + 1, end).replace(/^!/, '^').replace(/\\/g, '\\\\')}]`; i = end }
    } else out += c.replace(/[.+^${}()|\\/]/g, '\\$&')
  }
  return new RegExp(`^${out}$`, 's')
}
