/**
 * Control operations of issue #12: the pool's remotes on S3. The daemon only keeps their definitions
 * (POOL/remotes.json, src/remote/remotes.ts); the CLI talks to S3 itself, with the credentials of whoever
 * runs it, and moves data through the export and import streams.
 */
import { invalid } from '../errors'
import { addRemote, makeDefinition, readRemotes, removeRemote } from '../remote/remotes'
import { HandlerContext, Handlers } from './handler'

export function remoteHandlers ({ pool, log }: HandlerContext) {
  // The arguments' types were checked against operations.ts by the server.
  const text = (args: Record<string, unknown>, key: string): string | undefined => args[key] as string | undefined
  return {
    remoteAdd: async args => {
      const keyFile = text(args, 'keyFile')
      const fingerprint = text(args, 'keyFingerprint')
      if (keyFile !== undefined && fingerprint === undefined) throw invalid('missing keyFingerprint')
      const key = keyFile === undefined ? undefined : { file: keyFile, fingerprint: fingerprint as string }
      const definition = makeDefinition(args.name as string, args.url as string, text(args, 'endpoint'), text(args, 'region'), key)
      addRemote(pool.dir, definition)
      // The key's fingerprint only: the daemon never sees the key.
      log(`remote ${definition.name} added: ${definition.url}${definition.endpoint === undefined ? '' : ` at ${definition.endpoint}`}${key === undefined ? '' : ` (encrypted, key fingerprint ${key.fingerprint})`}`)
      return definition
    },
    remoteRemove: async args => {
      const name = args.name as string
      removeRemote(pool.dir, name)
      log(`remote ${name} removed`)
      return { removed: name }
    },
    remoteList: async () => readRemotes(pool.dir)
  } satisfies Handlers
}
