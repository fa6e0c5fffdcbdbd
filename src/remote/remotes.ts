/**
 * The remotes a pool knows (`vdiskfs remote add`): name -> where its store is (bucket, prefix, endpoint,
 * region). Kept in POOL/remotes.json, 0600, replaced atomically (a temporary file written, fsynced and
 * renamed over it, then the directory fsynced). Never credentials: those stay in the environment of
 * whoever runs push/pull (the AWS variables and shared config files). Never a key either: an encrypted
 * remote records its key file's path and the key's fingerprint (not a secret), and push and pull read the
 * key file themselves.
 */
import fs from 'node:fs'
import path from 'node:path'
import { VdiskError, corrupt, exists, fromSystemError, invalid, notFound } from '../errors'
import { RemoteLocation, parseS3Url, urlWithoutCredentials } from './s3-store'

export const remotesFile = 'remotes.json'
export const remotesVersion = 1

export interface RemoteDefinition extends RemoteLocation {
  name: string
  url: string
  added: string
  /** An encrypted remote's key file (an absolute path) and its key's fingerprint (crypt.ts). */
  keyFile?: string
  keyFingerprint?: string
}

interface RemotesFile { version: number, remotes: RemoteDefinition[] }

export function checkRemoteName (name: string): void {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/.test(name)) throw invalid(`invalid remote name '${name}': use letters, digits, '.', '_' and '-' (at most 64)`)
}

/** Checks what `remote add` was given and makes the definition. Errors: INVALID. */
export function makeDefinition (name: string, url: string, endpoint?: string, region?: string, key?: { file: string, fingerprint: string }): RemoteDefinition {
  checkRemoteName(name)
  const { bucket, prefix } = parseS3Url(url)
  if (endpoint !== undefined) {
    // Never echoed whole: it may carry credentials (userinfo, a token in its query), refused below.
    const shown = urlWithoutCredentials(endpoint).replace(/[?#].*$/s, '')
    let parsed: URL
    try { parsed = new URL(endpoint) } catch { throw invalid(`invalid endpoint '${shown}': give a URL such as http://127.0.0.1:7480`) }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw invalid(`invalid endpoint '${shown}': http or https only`)
    if (parsed.username !== '' || parsed.password !== '') throw invalid('the endpoint must not carry credentials: use the AWS environment variables or ~/.aws')
    if (endpoint.includes('?') || endpoint.includes('#')) {
      throw invalid(`the endpoint ${parsed.origin}${parsed.pathname} must not carry a query or a fragment (a token there would be stored in the pool and printed): give a scheme, a host, a port and at most a path; credentials come from the AWS environment variables or ~/.aws`)
    }
  }
  if (region !== undefined && !/^[a-z0-9-]{1,64}$/.test(region)) throw invalid(`invalid region '${region}'`)
  const definition: RemoteDefinition = { name, url, bucket, prefix, added: new Date().toISOString() }
  if (endpoint !== undefined) definition.endpoint = endpoint
  if (region !== undefined) definition.region = region
  if (key !== undefined) {
    if (!path.isAbsolute(key.file) || key.file.includes('\n')) throw invalid('the key file must be given as an absolute path')
    if (!/^[0-9a-f]{4}(:[0-9a-f]{4}){7}$/.test(key.fingerprint)) throw invalid(`invalid key fingerprint '${key.fingerprint}'`)
    definition.keyFile = key.file
    definition.keyFingerprint = key.fingerprint
  }
  return definition
}

/** The remotes of the pool in `poolDir`. Errors: CORRUPT for a damaged file, IO. */
export function readRemotes (poolDir: string): RemoteDefinition[] {
  const file = path.join(poolDir, remotesFile)
  let text: string
  try { text = fs.readFileSync(file, 'utf8') } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return []
    throw fromSystemError(err, `reading ${file}`)
  }
  let parsed: RemotesFile
  try { parsed = JSON.parse(text) as RemotesFile } catch { throw corrupt(`${file} is not JSON`) }
  if (parsed === null || typeof parsed !== 'object' || parsed.version !== remotesVersion || !Array.isArray(parsed.remotes)) throw corrupt(`${file}: not a version ${remotesVersion} remotes file`)
  for (const r of parsed.remotes) {
    if (r === null || typeof r !== 'object' || typeof r.name !== 'string' || typeof r.url !== 'string') throw corrupt(`${file}: a damaged remote entry`)
  }
  // Re-derived from what was given, so a hand-edited file is held to the same rules as `remote add`.
  return parsed.remotes.map(r => {
    try {
      const key = r.keyFile === undefined && r.keyFingerprint === undefined ? undefined : { file: String(r.keyFile), fingerprint: String(r.keyFingerprint) }
      return { ...makeDefinition(r.name, r.url, r.endpoint, r.region, key), added: String(r.added) }
    } catch (err) {
      if (!(err instanceof VdiskError)) throw err
      throw new VdiskError(err.code, `${file}: remote ${r.name}: ${err.message} (edit or remove the entry in the file)`)
    }
  })
}

export function findRemote (poolDir: string, name: string): RemoteDefinition {
  const remote = readRemotes(poolDir).find(r => r.name === name)
  if (remote === undefined) throw notFound(`remote ${name} (see vdiskfs remote list)`)
  return remote
}

/** Adds a remote. Errors: EXISTS for a name taken, IO/NO_SPACE writing the file. */
export function addRemote (poolDir: string, definition: RemoteDefinition): void {
  const remotes = readRemotes(poolDir)
  if (remotes.some(r => r.name === definition.name)) throw exists(`remote ${definition.name}`)
  writeRemotes(poolDir, [...remotes, definition])
}

/** Removes a remote (its store is left as it is). Errors: NOT_FOUND, IO. */
export function removeRemote (poolDir: string, name: string): void {
  const remotes = readRemotes(poolDir)
  if (!remotes.some(r => r.name === name)) throw notFound(`remote ${name}`)
  writeRemotes(poolDir, remotes.filter(r => r.name !== name))
}

function writeRemotes (poolDir: string, remotes: RemoteDefinition[]): void {
  const file = path.join(poolDir, remotesFile)
  const temporary = `${file}.tmp-${process.pid}`
  try {
    const fd = fs.openSync(temporary, 'w', 0o600)
    try {
      fs.fchmodSync(fd, 0o600)
      fs.writeSync(fd, JSON.stringify({ version: remotesVersion, remotes } satisfies RemotesFile, null, 2) + '\n')
      fs.fsyncSync(fd)
    } finally { fs.closeSync(fd) }
    fs.renameSync(temporary, file)
    const dir = fs.openSync(poolDir, 'r')
    try { fs.fsyncSync(dir) } finally { fs.closeSync(dir) }
  } catch (err) {
    fs.rmSync(temporary, { force: true })
    if (err instanceof VdiskError) throw err
    throw fromSystemError(err, `writing ${file}`)
  }
}
