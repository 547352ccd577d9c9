// The attacks of security.test.ts again, on the nftables backend.
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
process.env.OCINET_TEST_FIREWALL = 'nftables';
await import('./security.test.js');
