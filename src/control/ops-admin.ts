/** Control operations of issue #11: map, cp, promote, info and the other everyday tools. */
import { Handler, HandlerContext } from './server'

export function adminHandlers (_context: HandlerContext): Record<string, Handler> {
  return {}
}
