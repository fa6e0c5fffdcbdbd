/** Control operations of issue #12: remotes on S3. */
import { Handler, HandlerContext } from './server'

export function remoteHandlers (_context: HandlerContext): Record<string, Handler> {
  return {}
}
