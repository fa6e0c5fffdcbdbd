/**
 * Moved to src/inspect/repair.ts (issue #19: the tools over a pool live in their own folder). This
 * re-export stays only for the files the FUSE transport change owns (src/fuse/, src/daemon/,
 * src/cli/main.ts); delete it once they import from ../inspect/repair.
 */
export * from '../inspect/repair'
