// vdiskfs/loop-capture-changed: a function made in a loop reads a `let` binding of that loop which the
// loop changes after the function was made, in the same iteration. The function sees the changed value
// when it runs later (a queued lock callback, a .then): issue #17's first bug,
//   for (let done = 0; done < n;) { writes.push(lock(async () => write(data.subarray(done, ...)))); done += count }
// ESLint's no-loop-func takes every `let` declared in the loop as safe (each iteration has its own
// binding), so it misses this: the binding is per iteration, but the change is in the same iteration.
// A write in a `for` loop's update clause is not reported: it changes the next iteration's copy.
// Reported: writes inside the loop that come after the function in the source, or that sit in an inner
// loop which also contains the function (the next turn of the inner loop changes the captured binding).

const functionTypes = new Set(['FunctionExpression', 'ArrowFunctionExpression', 'FunctionDeclaration'])
const loopTypes = new Set(['ForStatement', 'ForInStatement', 'ForOfStatement', 'WhileStatement', 'DoWhileStatement'])

const inside = (node, outer) => node.range[0] >= outer.range[0] && node.range[1] <= outer.range[1]

export default {
  meta: {
    type: 'problem',
    docs: { description: 'disallow a closure made in a loop reading a loop binding that the same iteration changes afterwards' },
    schema: [],
    messages: {
      changed: "Function made in a loop reads '{{name}}', which this iteration changes afterwards (line {{line}}): when it runs later it sees the changed value. Copy the value into a const first.",
    },
  },
  create (context) {
    const sourceCode = context.sourceCode
    function check (fn) {
      // The loops between this function and the function (or program) around it.
      const loops = []
      for (let node = fn.parent; node && !functionTypes.has(node.type); node = node.parent) {
        if (loopTypes.has(node.type)) loops.push(node)
      }
      if (loops.length === 0) return
      const scope = sourceCode.getScope(fn)
      const reported = new Set()
      for (const reference of scope.through) {
        const variable = reference.resolved
        if (!variable || reported.has(variable) || !reference.isRead()) continue
        const def = variable.defs[0]
        if (!def || def.type !== 'Variable' || def.parent.kind !== 'let') continue
        // The loop that declares the binding (it must be one of the loops around the function).
        const declaring = loops.find(loop => inside(def.parent, loop))
        if (!declaring) continue
        const inUpdate = node => declaring.type === 'ForStatement' && declaring.update && inside(node, declaring.update)
        const innerLoops = loops.slice(0, loops.indexOf(declaring)) // loops inside `declaring` that contain fn
        for (const write of variable.references) {
          if (!write.isWrite() || write.init) continue
          const id = write.identifier
          if (!inside(id, declaring) || inside(id, fn) || inUpdate(id)) continue
          if (declaring.type === 'ForStatement' && declaring.init && inside(id, declaring.init)) continue
          const after = id.range[0] > fn.range[1]
          const sameInnerLoop = innerLoops.some(loop => inside(id, loop))
          if (after || sameInnerLoop) {
            reported.add(variable)
            context.report({ node: fn, messageId: 'changed', data: { name: variable.name, line: id.loc.start.line } })
            break
          }
        }
      }
    }
    return { FunctionExpression: check, ArrowFunctionExpression: check, FunctionDeclaration: check }
  },
}
