/** Routes, as `ip` batch lines. */
export function defaultRoute(gateway: string, dev: string): string {
  return `route replace default via ${gateway} dev ${dev}`;
}
