/**
 * Moved to src/inspect/facts.ts (issue #19: the tools over a pool live in their own folder). This
 * re-export stays only for the files the FUSE transport change owns (src/fuse/, src/daemon/,
 * src/cli/main.ts); delete it once they import from ../inspect/facts.
 */
export * from '../inspect/facts'
