/**
 * A test hook: with VDISKFS_TEST_REMOTE_PAUSE=DIR and VDISKFS_TEST_REMOTE_PAUSE_AT=P set, a push or pull
 * reaching point P (push-batch after each batch of chunks, push-manifest before the manifest, pull-batch
 * after each batch of blocks, hydrate-batch after each batch of a lazy pull's background walk; in the
 * daemon, lazy-apply before a lazy pull's references are applied after the reply and lazy-apply-commit
 * before their commit, volume/lazy-refs.ts) creates DIR/P.paused and waits until DIR/P.go exists, so a
 * test can kill the S3 server or the daemon, or run gc, exactly there. Unset (always, outside tests), it costs an environment lookup.
 */
import fs from 'node:fs'
import path from 'node:path'

const pollMs = 50

export async function testPause (point: string): Promise<void> {
  const dir = process.env.VDISKFS_TEST_REMOTE_PAUSE
  if (dir === undefined || dir === '' || process.env.VDISKFS_TEST_REMOTE_PAUSE_AT !== point) return
  const go = path.join(dir, `${point}.go`)
  if (fs.existsSync(go)) return
  fs.writeFileSync(path.join(dir, `${point}.paused`), `${process.pid}\n`)
  while (!fs.existsSync(go)) await new Promise(resolve => setTimeout(resolve, pollMs))
}
