/**
 * Control operations of issue #11: what the daemon is doing (status, for `vdiskfs status --json/--prometheus`)
 * and what an image is (info, for `vdiskfs info`).
 */
import { VolumeKind } from '../catalog/catalog'
import { invalid, notFound } from '../errors'
import { volumeFacts } from '../volume/facts'
import { Handler, HandlerContext } from './server'

export function statusHandlers ({ pool, space }: HandlerContext): Record<string, Handler> {
  return {
    info: async args => {
      const { kind, name } = args
      if (typeof kind !== 'string' || typeof name !== 'string' || !['disk', 'backup', 'clone'].includes(kind)) throw invalid('missing image')
      // Hidden names (volumes removed while open) are not in the namespace.
      if (name.startsWith('.')) throw notFound(`${kind} ${name}`)
      const volume = pool.get(kind as VolumeKind, name)
      // Fresh figures, as `vdiskfs du` gives (the xattrs may serve them up to spaceUsageStaleMs old).
      space.report()
      return volumeFacts(pool, space, volume)
    }
  }
}
