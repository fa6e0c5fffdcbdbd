/**
 * Volume names: which names a user may give, and the hidden names the pool and libfuse give a volume
 * removed while open. A hidden name starts with '.', which no user's name may, so it never collides.
 *
 * Assumes: nothing; pure functions over strings.
 */
import { invalid } from '../errors'
import { volumeNamePattern } from '../limits'

/** The hidden name `remove` with force gives an open volume: `.removed-ID`. */
export const removedPrefix = '.removed-'

/**
 * libfuse 2.9's hidden_name(): ".fuse_hidden%08x%08x" (node id, counter). libfuse renames a file that
 * is unlinked while open to such a name and unlinks it at the last close.
 */
const libfuseHiddenName = /^\.fuse_hidden[0-9a-f]{16}$/

/** Whether `name` is one libfuse gives a file unlinked while open. */
export function isLibfuseHiddenName (name: string): boolean {
  return libfuseHiddenName.test(name)
}

export function checkName (name: string): void {
  if (!volumeNamePattern.test(name)) {
    throw invalid(`invalid name '${name}': use 1 to 128 letters, digits, '.', '_' or '-', starting with a letter or digit`)
  }
}

