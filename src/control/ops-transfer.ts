/** Control operations of issue #12: diff, export, import, prune. */
import { Handler, HandlerContext } from './server'

export function transferHandlers (_context: HandlerContext): Record<string, Handler> {
  return {}
}
