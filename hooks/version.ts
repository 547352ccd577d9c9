// Replaced at bundle time by esbuild's `define`; the fallback serves tests run from source.
declare const OCINET_VERSION: string | undefined;
export const VERSION: string = typeof OCINET_VERSION === 'string' ? OCINET_VERSION : '0.0.0-dev';
