/**
 * A small argument parser: positionals, boolean flags and flags with values, as each command declares
 * them. Unknown flags and wrong counts are usage errors (exit status 2).
 */
export class UsageError extends Error {}

export interface Spec {
  positionals: string[]
  /** Positionals that may follow the required ones (usage shows them in brackets). */
  optional?: string[]
  booleans?: Record<string, string[]>
  values?: Record<string, string[]>
  /** Any number of positionals may follow the required ones (usage shows `...`). */
  variadic?: boolean
  /** Keys of `values` that may be given more than once: all of them are in `lists` (the last in `values`). */
  repeatable?: string[]
}

export interface Parsed { positionals: string[], flags: Record<string, boolean>, values: Record<string, string>, lists: Record<string, string[]> }

export function parseArgs (argv: string[], spec: Spec): Parsed {
  const positionals: string[] = []
  const flags: Record<string, boolean> = {}
  const values: Record<string, string> = {}
  const lists: Record<string, string[]> = {}
  const booleanOf = new Map<string, string>()
  const valueOf = new Map<string, string>()
  for (const [key, names] of Object.entries(spec.booleans ?? {})) for (const name of names) booleanOf.set(name, key)
  for (const [key, names] of Object.entries(spec.values ?? {})) for (const name of names) valueOf.set(name, key)
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]
    if (arg === '--') { positionals.push(...argv.slice(i + 1)); break }
    if (arg.startsWith('-') && arg !== '-') {
      const [name, inline] = arg.includes('=') ? [arg.slice(0, arg.indexOf('=')), arg.slice(arg.indexOf('=') + 1)] : [arg, undefined]
      const flag = booleanOf.get(name)
      if (flag !== undefined && inline === undefined) { flags[flag] = true; continue }
      const value = valueOf.get(name)
      if (value !== undefined) {
        const given = inline ?? argv[++i]
        if (given === undefined) throw new UsageError(`${name} needs a value`)
        values[value] = given
        lists[value] = [...(lists[value] ?? []), given]
        continue
      }
      throw new UsageError(`unknown option ${arg}`)
    }
    positionals.push(arg)
  }
  const optional = spec.optional ?? []
  if (positionals.length < spec.positionals.length || (spec.variadic !== true && positionals.length > spec.positionals.length + optional.length)) {
    const expected = optional.length === 0 ? `${spec.positionals.length}` : `${spec.positionals.length} to ${spec.positionals.length + optional.length}`
    const names = [...spec.positionals, ...optional.map(name => `[${name}]`)].join(' ')
    throw new UsageError(`expected ${expected} argument${spec.positionals.length + optional.length === 1 ? '' : 's'} (${names}), got ${positionals.length}`)
  }
  return { positionals, flags, values, lists }
}

/** Parses sizes like 65536, 64K, 64KiB, 1M. */
export function parseSize (text: string): number {
  const match = /^(\d+)\s*([KMGT]?)(i?B)?$/i.exec(text.trim())
  if (match === null) throw new UsageError(`invalid size '${text}'`)
  const power = ['', 'K', 'M', 'G', 'T'].indexOf(match[2].toUpperCase())
  return Number(match[1]) * 1024 ** power
}
