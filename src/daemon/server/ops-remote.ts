/**
 * Control operations of issue #12: the pool's remotes on S3. The daemon only keeps their definitions
 * (POOL/remotes.json, src/remote/remotes.ts); the CLI talks to S3 itself, with the credentials of whoever
 * runs it, and moves data through the export and import streams.
 */
import { invalid } from '../../errors'
import { addRemote, makeDefinition, readRemotes, removeRemote } from '../../remote/remotes'
import { HandlerContext, Handlers } from './handler'

export function remoteHandlers ({ pool, log }: HandlerContext) {
  return {
    remoteAdd: async args => {
      const keyFile = args.keyFile
      const fingerprint = args.keyFingerprint
      if (keyFile !== undefined && fingerprint === undefined) throw invalid('missing keyFingerprint')
      const key = keyFile === undefined || fingerprint === undefined ? undefined : { file: keyFile, fingerprint }
      const definition = makeDefinition(args.name, args.url, args.endpoint, args.region, key)
      addRemote(pool.dir, definition)
      // The key's fingerprint only: the daemon never sees the key.
      log(`remote ${definition.name} added: ${definition.url}${definition.endpoint === undefined ? '' : ` at ${definition.endpoint}`}${key === undefined ? '' : ` (encrypted, key fingerprint ${key.fingerprint})`}`)
      return definition
    },
    remoteRemove: async args => {
      const name = args.name
      removeRemote(pool.dir, name)
      log(`remote ${name} removed`)
      return { removed: name }
    },
    remoteList: async () => readRemotes(pool.dir)
  } satisfies Handlers
}
