// Run by make lint: the cases vdiskfs/map-check-then-act must and must not report.
import { RuleTester } from 'eslint'
import rule from './check-then-act.mjs'

const tester = new RuleTester({ languageOptions: { ecmaVersion: 2022, sourceType: 'module' } })
tester.run('map-check-then-act', rule, {
  valid: [
    // Looked up again after the await.
    'async function f (k) { if (m.has(k)) return; await g(); if (m.has(k)) return; m.set(k, 1) }',
    // Check and act in one synchronous step, the await after.
    'async function f (k) { if (!m.has(k)) m.set(k, 1); await g() }',
    // The await is in a branch that returns.
    'async function f (k) { if (m.get(k) === 1) return await g(); m.set(k, 2) }',
    'async function f (k) { const v = m.get(k); if (v === undefined) { await g(); return } m.delete(k) }',
    // The check is in a branch that throws.
    'async function f (k) { if (bad) { m.get(k); throw e } await g(); m.delete(k) }',
    // Another key, another map, or the act inside a nested function (its own).
    'async function f (k, j) { if (m.has(k)) return; await g(); m.set(j, 1); n.set(k, 1) }',
    'async function f (k) { if (m.has(k)) return; await g(); h(() => m.set(k, 1)) }',
  ],
  invalid: [
    {
      code: 'async function f (k) { if (m.has(k)) throw e; await g(); m.set(k, 1) }',
      errors: [{ messageId: 'stale' }],
    },
    {
      code: 'const f = async k => { const v = this.cache.get(k); if (v !== undefined) return v; const w = await load(k); this.cache.set(k, w); return w }',
      errors: [{ messageId: 'stale' }],
    },
    {
      code: 'async function f (k) { if (!s.has(k)) { for await (const x of xs) use(x); s.add(k) } }',
      errors: [{ messageId: 'stale' }],
    },
  ],
})
console.log('eslint-rules: map-check-then-act cases pass')
