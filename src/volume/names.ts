/**
 * Volume names: which names a user may give, and how a volume removed while open is marked hidden.
 *
 * A user's name is what a Linux filesystem accepts in a directory: 1 to 255 bytes (UTF-8), no '/', no
 * NUL, not '.' or '..'; and valid UTF-8, since the daemon sees each path decoded (no U+FFFD, see
 * nameProblem). Names starting with '.' are ordinary names (rsync's `.rs.img.XXXXXX` temporary
 * files, say). A hidden volume's name therefore starts with '/', which no user's name contains: it never
 * collides with one, and it is what the catalog keeps, so a restart after a crash knows to drop it.
 *  - `/removed-ID`: the name `remove` with force gives an open volume (it answers to no name);
 *  - `/.fuse_hidden…`: libfuse 2's hidden name for a file unlinked while open (the transport before
 *    FUSE 3 renamed such a file to `.fuse_hidden…`). No longer made: a pool that still holds one shows
 *    it again under that name at the next start (Namespace.dropHidden).
 * Pools written before this rule kept hidden names starting with '.'; such a volume left by a crash
 * now shows up under that name (nothing is dropped on a guess) and can be removed with `vdiskfs rm`.
 *
 * Assumes: nothing; pure functions over strings.
 */
import { VolumeKind } from '../catalog/catalog'
import { invalid } from '../errors'
import { volumeNameBytesMax } from '../limits'

/** The first character of every hidden name: a '/' is in no user's name. */
const hiddenMark = '/'

/**
 * libfuse 2.9's hidden_name(): ".fuse_hidden%08x%08x" (node id, counter). libfuse renames a file that
 * is unlinked while open to such a name and unlinks it at the last close.
 */
const libfuseHiddenName = /^\.fuse_hidden[0-9a-f]{16}$/

/** What a byte that is not UTF-8 becomes once decoded (TextDecoder, napi_create_string_utf8). */
const replacementCharacter = '\uFFFD'

/** Whether `name` is one libfuse 2 gave a file unlinked while open. */
function isLibfuseHiddenName (name: string): boolean {
  return libfuseHiddenName.test(name)
}

/** Whether a volume's (stored) name marks it hidden: removed while open. */
export function isHiddenName (name: string): boolean {
  return name.startsWith(hiddenMark)
}

/** The hidden name `remove` with force gives open volume `id`. */
export function removedName (id: number): string {
  return `${hiddenMark}removed-${id}`
}

/** The `.fuse_hidden…` name a volume stored as `name` was hidden under, or null when libfuse did not hide it. */
export function libfuseNameOf (name: string): string | null {
  const libfuseName = name.slice(hiddenMark.length)
  return isHiddenName(name) && isLibfuseHiddenName(libfuseName) ? libfuseName : null
}

/** Why `name` is not a name a user may give, or null when it is one. */
export function nameProblem (name: string): string | null {
  if (name === '' || name === '.' || name === '..') return 'a name cannot be empty, \'.\' or \'..\''
  if (name.includes('/')) return 'a name cannot contain \'/\''
  if (name.includes('\0')) return 'a name cannot contain a NUL byte'
  // The FUSE addon decodes each name as UTF-8 (napi_create_string_utf8), turning every byte that is not
  // UTF-8 into U+FFFD, so two different names would reach the daemon as one: refusing U+FFFD refuses them all (and, alas, the
  // character itself, which no other name can be told apart from).
  if (name.includes(replacementCharacter)) return 'a name must be valid UTF-8 (and cannot contain U+FFFD)'
  if (Buffer.byteLength(name, 'utf8') > volumeNameBytesMax) return `a name is at most ${volumeNameBytesMax} bytes`
  return null
}

/** Throws INVALID unless `name` is one a user may give (see nameProblem). */
export function checkName (name: string): void {
  const problem = nameProblem(name)
  if (problem !== null) throw invalid(`invalid name '${name}': ${problem}`)
}

/** The folder of the mount each kind of volume appears in: disks/, backups/, clones/. */
export const dirOfKind: Record<VolumeKind, string> = { disk: 'disks', backup: 'backups', clone: 'clones' }
