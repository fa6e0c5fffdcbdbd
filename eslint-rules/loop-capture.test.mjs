// Run by make lint: the cases vdiskfs/loop-capture-changed must and must not report.
import { RuleTester } from 'eslint'
import rule from './loop-capture.mjs'

const tester = new RuleTester({ languageOptions: { ecmaVersion: 2022, sourceType: 'module' } })
tester.run('loop-capture-changed', rule, {
  valid: [
    // The piece is cut before the closure is made (the fix of issue #17's first bug).
    'for (let done = 0; done < n;) { const piece = data.subarray(done, done + 1); writes.push(lock(async () => write(piece))); done += 1 }',
    // A change in the update clause goes to the next iteration's copy.
    'for (let i = 0; i < n; i++) fns.push(() => i)',
    // Changed before the closure is made, not after.
    'for (const x of xs) { let y = x; y += 1; fns.push(() => y) }',
    // The closure changes the binding itself; nothing else does.
    'for (const x of xs) { let y = x; fns.push(() => { y += 1; return y }) }',
    // Declared outside any loop around the closure (no-loop-func's business).
    'let a = 0; fns.push(() => a); a = 1',
  ],
  invalid: [
    {
      code: 'for (let done = 0; done < n;) { writes.push(lock(async () => write(data.subarray(done, done + 1)))); done += 1 }',
      errors: [{ messageId: 'changed' }],
    },
    {
      code: 'while (more()) { let at = 0; queue.push(() => use(at)); at = next() }',
      errors: [{ messageId: 'changed' }],
    },
    {
      code: 'for (const x of xs) { let y = x; while (y < 9) { fns.push(() => y); y++ } }',
      errors: [{ messageId: 'changed' }],
    },
    {
      // Changed before the closure in the source, but by the next turn of an inner loop.
      code: 'for (const x of xs) { let y = x; while (y < 9) { y++; fns.push(() => y) } }',
      errors: [{ messageId: 'changed' }],
    },
    {
      code: 'for (let i = 0; i < n; i++) { p.then(function () { return i }); i += 2 }',
      errors: [{ messageId: 'changed' }],
    },
  ],
})
console.log('eslint-rules: loop-capture-changed cases pass')
