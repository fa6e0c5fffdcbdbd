// make lint (run first by make test): a few rules aimed at interleaving bugs (issue #17), no preset.
//  - no-loop-func: a closure made in a loop that reads a variable declared outside it that changes.
//  - vdiskfs/loop-capture-changed (eslint-rules/): a closure made in a loop that reads a `let` of the loop
//    which the same iteration changes afterwards (a write queued behind a lock read the loop's `done`
//    after the loop had advanced it); no-loop-func takes those as safe.
//  - require-atomic-updates: a variable or property read, then an await/yield, then assigned from the
//    value read before (check-then-act across an await).
//  - vdiskfs/map-check-then-act (eslint-rules/): X.has(K) or X.get(K), an await, then X.set/add/delete(K)
//    without a new look-up: the check-then-act across an await that require-atomic-updates, which sees
//    only assignments, does not.
//  - no-floating-promises / no-misused-promises: a promise nobody awaits or catches (an unhandled
//    rejection ends the daemon), or one passed where a callback's result is ignored.
//  - await-thenable: an await of something that is not a promise (often a forgotten call or a sync API).
// (require-await was tried: 23 async functions with no await, all interface methods or callbacks that
// must return a promise, where dropping `async` would turn a rejection into a synchronous throw; left off.)
// Unused disable directives are errors: a disable comment for a race that got fixed must go with it.
// TypeScript is linted type-aware through tsconfig.json; the CommonJS scripts in scripts/ and bin/ get
// the rules that need no types.
import tseslint from 'typescript-eslint'
import path from 'node:path'
import loopCapture from './loop-capture.mjs'
import checkThenAct from './check-then-act.mjs'

// This file lives beside the rules; the patterns below are the repository's (basePath).
const root = path.resolve(import.meta.dirname, '..')

// no-loop-func takes every `let` declared in a loop as safe, so it misses issue #17's own bug (the
// binding is per iteration, but the loop changed it in the same iteration): this local rule covers that.
const vdiskfs = { rules: { 'loop-capture-changed': loopCapture, 'map-check-then-act': checkThenAct } }

const coreRules = {
  'require-atomic-updates': 'error',
  'vdiskfs/loop-capture-changed': 'error',
  'vdiskfs/map-check-then-act': 'error',
}

export default tseslint.config(
  {
    ignores: ['dist/**', 'node_modules/**', 'bench/work/**', 'pool/**', 'mnt/**', 'docs/**', 'examples/**', 'patches/**'],
  },
  {
    files: ['src/**/*.ts', 'workers/**/*.ts', 'bench/**/*.ts', 'test/**/*.ts'],
    languageOptions: {
      parser: tseslint.parser,
      parserOptions: { projectService: true, tsconfigRootDir: root },
    },
    plugins: { '@typescript-eslint': tseslint.plugin, vdiskfs },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      ...coreRules,
      '@typescript-eslint/no-loop-func': 'error',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/await-thenable': 'error',
    },
  },
  {
    files: ['eslint-rules/*.mjs'],
    languageOptions: { sourceType: 'module', ecmaVersion: 2022 },
    plugins: { vdiskfs },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: { ...coreRules, 'no-loop-func': 'error' },
  },
  {
    files: ['scripts/**/*.js', 'bin/vdiskfs', 'bin/mount.fuse.vdiskfs'],
    languageOptions: { sourceType: 'commonjs', ecmaVersion: 2022 },
    plugins: { vdiskfs },
    linterOptions: { reportUnusedDisableDirectives: 'error' },
    rules: {
      ...coreRules,
      'no-loop-func': 'error',
    },
  },
).map(config => ({ basePath: root, ...config }))
