/**
 * Moved to src/inspect/space.ts (issue #19: the tools over a pool live in their own folder). This
 * re-export stays only for the files the FUSE transport change owns (src/fuse/, src/daemon/,
 * src/cli/main.ts); delete it once they import from ../inspect/space.
 */
export * from '../inspect/space'
