// The runc suite of runc.test.ts again, on the iptables backend.
import { isolate } from './lib/isolate.js';
isolate(new URL(import.meta.url).pathname);
process.env.OCINET_TEST_FIREWALL = 'iptables';
await import('./runc.test.js');
