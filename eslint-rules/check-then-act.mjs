// vdiskfs/map-check-then-act: in one function, `X.has(K)` or `X.get(K)`, then an await, then
// `X.set(K, ...)`, `X.add(K)` or `X.delete(K)` with no new look-up of K after the await: the look-up may
// no longer hold when the act runs (check-then-act across an await, issue #17). require-atomic-updates
// sees only assignments, not these calls. X and K are compared as source text; code in nested functions
// belongs to those functions. Order is source order (a loop that acts before it checks is not seen);
// a look-up or await inside a return or throw, or inside a block that ends in one, does not count for an
// act outside it (execution does not go on from there to the act).

const functionTypes = new Set(['FunctionExpression', 'ArrowFunctionExpression', 'FunctionDeclaration'])
const checks = new Set(['has', 'get'])
const acts = new Set(['set', 'add', 'delete'])

export default {
  meta: {
    type: 'problem',
    docs: { description: 'disallow a Map/Set look-up, an await, then a change of the same key without a new look-up' },
    schema: [],
    messages: {
      stale: "'{{object}}.{{act}}({{key}})' after an await (line {{awaitLine}}) acts on the look-up at line {{checkLine}}, which may no longer hold: look it up again after the await.",
    },
  },
  create (context) {
    const source = context.sourceCode
    const stack = []
    const enter = () => stack.push({ events: [] })
    const exits = node => node.type === 'ReturnStatement' || node.type === 'ThrowStatement'
    // The ranges that execution leaves by return or throw, around `node` within its function.
    const exitingRegions = node => {
      const regions = []
      for (let n = node; n && !functionTypes.has(n.type); n = n.parent) {
        if (exits(n) || (n.type === 'BlockStatement' && n.body.length > 0 && exits(n.body[n.body.length - 1]))) regions.push(n.range)
      }
      return regions
    }
    const reaches = (event, act) => event.regions.every(([from, to]) => act.node.range[0] >= from && act.node.range[1] <= to)
    const keyOf = call => {
      const callee = call.callee
      if (callee.type !== 'MemberExpression' || callee.computed || callee.property.type !== 'Identifier') return null
      const name = callee.property.name
      if (call.arguments.length === 0 || call.arguments[0].type === 'SpreadElement') return null
      const kind = checks.has(name) ? 'check' : acts.has(name) ? 'act' : null
      if (kind === null) return null
      return { kind, name, object: source.getText(callee.object), key: source.getText(call.arguments[0]) }
    }
    const exit = () => {
      const { events } = stack.pop()
      const awaits = events.filter(e => e.kind === 'await')
      if (awaits.length === 0) return
      for (const act of events) {
        if (act.kind !== 'act') continue
        const same = e => e.kind === 'check' && e.object === act.object && e.key === act.key
        // The last await before the act, and whether a look-up of the key comes between it and the act.
        const before = awaits.filter(a => a.at <= act.at && reaches(a, act))
        if (before.length === 0) continue
        const last = before[before.length - 1]
        if (events.some(e => same(e) && e.at >= last.at && e.at < act.at)) continue
        const check = events.find(e => same(e) && e.at < last.at && reaches(e, act))
        if (check === undefined) continue
        context.report({ node: act.node, messageId: 'stale', data: { object: act.object, act: act.name, key: act.key, awaitLine: last.node.loc.start.line, checkLine: check.node.loc.start.line } })
      }
    }
    const handlers = {
      Program: enter,
      'Program:exit': exit,
      AwaitExpression (node) { stack[stack.length - 1].events.push({ kind: 'await', at: node.range[1], node, regions: exitingRegions(node) }) },
      'ForOfStatement[await=true]' (node) { stack[stack.length - 1].events.push({ kind: 'await', at: node.right.range[1], node, regions: exitingRegions(node) }) },
      CallExpression (node) {
        const key = keyOf(node)
        if (key !== null) stack[stack.length - 1].events.push({ ...key, at: node.range[0], node, regions: exitingRegions(node) })
      },
    }
    for (const type of functionTypes) { handlers[type] = enter; handlers[`${type}:exit`] = exit }
    return handlers
  },
}
