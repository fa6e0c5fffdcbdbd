/**
 * Which backups `vdiskfs prune` keeps: Proxmox Backup Server's retention algorithm (pbs-datastore
 * prune.rs, mark_selections), by creation time in UTC. Pure: no pool, no clock.
 *
 * Backups are grouped (by the volume they were taken from: `groupKey`, else `group`) and each group
 * is pruned on its own. A protected backup is kept (rule 'protected') and counts for no rule, as in
 * PBS: it neither takes a period's place nor covers one.
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

/**
 * `group`: what the group is called (its source's label); `groupKey`: what it is told apart by when
 * set (its source's identity: two sources of one label over time, or imports from several hosts, stay
 * apart); `protected`: kept whatever the rules say.
 */
export interface PruneCandidate { id: number, name: string, createdMs: number, group: string, groupKey?: string, protected?: boolean }
export interface PruneDecision extends PruneCandidate { keep: boolean, rule: PruneRule | 'protected' | null }

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
  for (const c of candidates) {
    const key = c.groupKey ?? c.group
    const list = groups.get(key)
    if (list === undefined) groups.set(key, [c])
    else list.push(c)
  }
  const out: PruneDecision[] = []
  for (const group of [...groups.keys()].sort()) {
    // Newest first; equal times by id, the later one first.
    const all = (groups.get(group) as PruneCandidate[]).slice().sort((a, b) => b.createdMs - a.createdMs || b.id - a.id)
    const list = all.filter(c => c.protected !== true)
    const marks = new Map<number, { keep: boolean, rule: PruneRule | 'protected' | null }>()
    for (const c of all) if (c.protected === true) marks.set(c.id, { keep: true, rule: 'protected' })
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
    for (const c of all) out.push({ ...c, ...(marks.get(c.id)?.keep === true ? marks.get(c.id) as { keep: boolean, rule: PruneRule | 'protected' } : { keep: false, rule: null }) })
  }
  return out
}

/** A compiled glob: `test(name)` says whether the whole name matches. */
export interface GlobMatcher { test: (name: string) => boolean }

/** One element of a glob: a character, `?` (any one character), a class `[...]`, or `*` (any run). */
type GlobToken =
  | { kind: 'char', char: string }
  | { kind: 'any' }
  | { kind: 'class', negated: boolean, ranges: Array<[string, string]> }
  | { kind: 'star' }

function parseGlob (glob: string): GlobToken[] {
  const chars = Array.from(glob) // by code point: `?` is one character, not one UTF-16 unit
  const tokens: GlobToken[] = []
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]
    if (c === '*') { if (tokens[tokens.length - 1]?.kind !== 'star') tokens.push({ kind: 'star' }); continue }
    if (c === '?') { tokens.push({ kind: 'any' }); continue }
    // A class ends at the first ']' after its first character (so '[]a]' holds ']' and 'a'); a '['
    // without one is a plain character.
    const end = c === '[' ? chars.indexOf(']', i + 2) : -1
    if (end < 0) { tokens.push({ kind: 'char', char: c }); continue }
    let body = chars.slice(i + 1, end)
    const negated = body[0] === '!' || body[0] === '^'
    if (negated) body = body.slice(1)
    const ranges: Array<[string, string]> = []
    for (let j = 0; j < body.length; j++) {
      if (body[j + 1] === '-' && j + 2 < body.length) { ranges.push([body[j], body[j + 2]]); j += 2 } else ranges.push([body[j], body[j]])
    }
    tokens.push({ kind: 'class', negated, ranges })
    i = end
  }
  return tokens
}

function matchesOne (token: GlobToken, c: string): boolean {
  switch (token.kind) {
    case 'char': return token.char === c
    case 'any': return true
    case 'class': {
      const point = c.codePointAt(0) as number
      const inside = token.ranges.some(([low, high]) => point >= (low.codePointAt(0) as number) && point <= (high.codePointAt(0) as number))
      return inside !== token.negated
    }
    case 'star': return false
  }
}

/**
 * A shell-style glob (`*`, `?`, `[...]`, `[!...]`) matched against whole names. The matcher walks the
 * name once per `*` restart, keeping only the latest `*` to fall back to: at most (glob length x name
 * length) steps, never the exponential backtracking a RegExp of '.*'s can take (prune runs it on the
 * daemon's event loop, with a glob the caller chose).
 */
export function globPattern (glob: string): GlobMatcher {
  const tokens = parseGlob(glob)
  return {
    test (name: string): boolean {
      const chars = Array.from(name)
      let t = 0
      let n = 0
      let starAt = -1 // the token after the latest '*', and the name position it was tried at
      let starName = 0
      while (n < chars.length) {
        if (t < tokens.length && tokens[t].kind === 'star') { starAt = ++t; starName = n; continue }
        if (t < tokens.length && matchesOne(tokens[t], chars[n])) { t++; n++; continue }
        // A mismatch: let the latest '*' take one more character, or fail without one.
        if (starAt < 0) return false
        t = starAt
        n = ++starName
      }
      while (t < tokens.length && tokens[t].kind === 'star') t++
      return t === tokens.length
    }
  }
}
