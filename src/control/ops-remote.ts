/**
 * Control operations of issue #12: the pool's remotes on S3. The daemon only keeps their definitions
 * (POOL/remotes.json, src/remote/remotes.ts); the CLI talks to S3 itself, with the credentials of whoever
 * runs it, and moves data through the export and import streams.
 */
import { invalid } from '../errors'
import { addRemote, makeDefinition, readRemotes, removeRemote } from '../remote/remotes'
import { Handler, HandlerContext } from './server'

export function remoteHandlers ({ pool, log }: HandlerContext): Record<string, Handler> {
  const text = (args: Record<string, unknown>, key: string, required = true): string | undefined => {
    const value = args[key]
    if (value === undefined && !required) return undefined
    if (typeof value !== 'string') throw invalid(`missing ${key}`)
    return value
  }
  return {
    remoteAdd: async args => {
      const keyFile = text(args, 'keyFile', false)
      const key = keyFile === undefined ? undefined : { file: keyFile, fingerprint: text(args, 'keyFingerprint')! }
      const definition = makeDefinition(text(args, 'name')!, text(args, 'url')!, text(args, 'endpoint', false), text(args, 'region', false), key)
      addRemote(pool.dir, definition)
      // The key's fingerprint only: the daemon never sees the key.
      log(`remote ${definition.name} added: ${definition.url}${definition.endpoint === undefined ? '' : ` at ${definition.endpoint}`}${key === undefined ? '' : ` (encrypted, key fingerprint ${key.fingerprint})`}`)
      return definition
    },
    remoteRemove: async args => {
      const name = text(args, 'name')!
      removeRemote(pool.dir, name)
      log(`remote ${name} removed`)
      return { removed: name }
    },
    remoteList: async () => readRemotes(pool.dir)
  }
}
