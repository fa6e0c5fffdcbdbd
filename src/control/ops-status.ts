/** Control operations of issue #11: what the daemon is doing (status --json/--prometheus). */
import { Handler, HandlerContext } from './server'

export function statusHandlers (_context: HandlerContext): Record<string, Handler> {
  return {}
}
