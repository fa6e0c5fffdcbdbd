/** The package version, read once from package.json. */
export const version: string = (require('../../package.json') as { version: string }).version
