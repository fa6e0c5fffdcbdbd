/** The package version, read once from package.json. */
// eslint-disable-next-line @typescript-eslint/no-var-requires
export const version: string = (require('../../package.json') as { version: string }).version
