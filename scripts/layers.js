#!/usr/bin/env node
// What imports what, by folder: every import (type-only ones too) of the engine's TypeScript (src/,
// workers/), read with the TypeScript compiler's own parser, folded to the top-level folder of each
// side (src/volume/pool.ts -> volume; src/errors.ts -> errors.ts; workers/seal.ts -> workers).
//
//   node scripts/layers.js           the graph, one line per folder: what it imports (with counts)
//   node scripts/layers.js --check   the same; exits 1 when any folders import each other in a circle
//                                    (make lint runs it), naming the files on each edge of the circle
//   node scripts/layers.js --long [N]  every function, method or arrow function of the engine longer
//                                    than N lines (default 80), longest first; those without a
//                                    "long: REASON" comment on the line above or the first line of
//                                    the body are marked; --check-long exits 1 when one is unmarked
'use strict'
const fs = require('node:fs')
const path = require('node:path')
const ts = require('typescript')

const root = path.join(__dirname, '..')
const roots = ['src', 'workers']

function sources () {
  const files = []
  const walk = dir => {
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const file = path.join(dir, entry.name)
      if (entry.isDirectory()) walk(file)
      else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.d.ts')) files.push(file)
    }
  }
  for (const r of roots) walk(path.join(root, r))
  return files.sort()
}

/** The node a file belongs to: its top-level folder under src/ (or the file itself at src/'s top), or workers. */
function nodeOf (file) {
  const rel = path.relative(root, file).split(path.sep)
  if (rel[0] === 'workers') return 'workers'
  return rel.length === 2 ? rel[1] : rel[1]
}

function resolve (from, spec) {
  if (!spec.startsWith('.')) return null
  const base = path.resolve(path.dirname(from), spec)
  for (const candidate of [`${base}.ts`, path.join(base, 'index.ts')]) if (fs.existsSync(candidate)) return candidate
  return null
}

function graph () {
  const edges = new Map() // from -> to -> [file pairs]
  for (const file of sources()) {
    const info = ts.preProcessFile(fs.readFileSync(file, 'utf8'), true, false)
    for (const imported of info.importedFiles) {
      const target = resolve(file, imported.fileName)
      if (target === null) continue
      const from = nodeOf(file)
      const to = nodeOf(target)
      if (from === to) continue
      if (!edges.has(from)) edges.set(from, new Map())
      const out = edges.get(from)
      if (!out.has(to)) out.set(to, [])
      out.get(to).push(`${path.relative(root, file)} -> ${path.relative(root, target)}`)
    }
  }
  return edges
}

/** The strongly connected components with more than one folder (Tarjan). */
function circles (edges) {
  const nodes = new Set([...edges.keys(), ...[...edges.values()].flatMap(m => [...m.keys()])])
  let index = 0
  const stack = []
  const state = new Map()
  const found = []
  const visit = v => {
    state.set(v, { index, low: index, onStack: true })
    index++
    stack.push(v)
    for (const w of edges.get(v)?.keys() ?? []) {
      if (!state.has(w)) { visit(w); state.get(v).low = Math.min(state.get(v).low, state.get(w).low) } else if (state.get(w).onStack) state.get(v).low = Math.min(state.get(v).low, state.get(w).index)
    }
    if (state.get(v).low === state.get(v).index) {
      const component = []
      let w
      do { w = stack.pop(); state.get(w).onStack = false; component.push(w) } while (w !== v)
      if (component.length > 1) found.push(component.sort())
    }
  }
  for (const v of [...nodes].sort()) if (!state.has(v)) visit(v)
  return found
}

function printGraph (edges) {
  for (const from of [...edges.keys()].sort()) {
    const out = edges.get(from)
    console.log(`${from.padEnd(12)} -> ${[...out.keys()].sort().map(to => `${to}(${out.get(to).length})`).join(' ')}`)
  }
}

/** Every function-like node of the engine longer than `limit` lines, with whether a "long:" reason stands beside it. */
function longFunctions (limit) {
  const found = []
  for (const file of sources()) {
    const text = fs.readFileSync(file, 'utf8')
    const lines = text.split('\n')
    const source = ts.createSourceFile(file, text, ts.ScriptTarget.Latest, true)
    const visit = node => {
      if ((ts.isFunctionDeclaration(node) || ts.isMethodDeclaration(node) || ts.isArrowFunction(node) || ts.isFunctionExpression(node) ||
        ts.isConstructorDeclaration(node) || ts.isGetAccessor(node)) && node.body !== undefined) {
        const start = source.getLineAndCharacterOfPosition(node.getStart(source)).line
        const end = source.getLineAndCharacterOfPosition(node.end).line
        const length = end - start + 1
        if (length > limit) {
          const near = [lines[start - 1] ?? '', lines[start] ?? '', lines[start + 1] ?? '']
          found.push({ where: `${path.relative(root, file)}:${start + 1}`, name: nameOf(node, source), length, reason: near.some(l => /\blong: /.test(l)) })
        }
      }
      ts.forEachChild(node, visit)
    }
    visit(source)
  }
  return found.sort((a, b) => b.length - a.length)
}

function nameOf (node, source) {
  if (node.name !== undefined) return node.name.getText(source)
  const parent = node.parent
  if (parent !== undefined && (ts.isVariableDeclaration(parent) || ts.isPropertyAssignment(parent) || ts.isPropertyDeclaration(parent))) return parent.name.getText(source)
  if (ts.isConstructorDeclaration(node)) return 'constructor'
  return '(anonymous)'
}

const args = process.argv.slice(2)
if (args[0] === '--long' || args[0] === '--check-long') {
  const limit = Number(args[1] ?? 80)
  const found = longFunctions(limit)
  for (const f of found) console.log(`${String(f.length).padStart(4)}  ${f.reason ? 'reason' : 'NONE  '}  ${f.where}  ${f.name}`)
  const unmarked = found.filter(f => !f.reason).length
  console.log(`${found.length} functions over ${limit} lines, ${unmarked} without a "long:" reason beside them`)
  if (args[0] === '--check-long' && unmarked > 0) process.exitCode = 1
} else {
  const edges = graph()
  printGraph(edges)
  const found = circles(edges)
  for (const component of found) {
    console.log(`circle: ${component.join(' <-> ')}`)
    for (const from of component) {
      for (const [to, pairs] of edges.get(from) ?? []) if (component.includes(to)) for (const pair of pairs) console.log(`  ${pair}`)
    }
  }
  if (found.length === 0) console.log('no circle between folders')
  if (args[0] === '--check' && found.length > 0) process.exitCode = 1
}
