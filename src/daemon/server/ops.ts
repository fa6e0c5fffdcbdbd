/**
 * Every control operation's handler, from the ops-*.ts modules: one table that must cover exactly the
 * operations of operations.ts (the compiler checks it).
 */
import { HandlerContext, HandlerTable } from './handler'
import { adminHandlers } from './ops-admin'
import { coreHandlers } from './ops-core'
import { lazyHandlers } from './ops-lazy'
import { remoteHandlers } from './ops-remote'
import { statusHandlers } from './ops-status'
import { transferHandlers } from './ops-transfer'

export function controlHandlers (context: HandlerContext): HandlerTable {
  const all: HandlerTable = { ...coreHandlers(context), ...adminHandlers(context), ...statusHandlers(context), ...transferHandlers(context), ...remoteHandlers(context), ...lazyHandlers(context) }
  return all
}
