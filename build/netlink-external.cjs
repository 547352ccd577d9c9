// The CLI bundle's `netlink`: its JS (~490 KB, most of what the bundle would hold) is a file
// of its own beside the bundles (dist/bin/netlink.js), parsed only by the commands that use
// it (`list`, `gc`); every other command (ipvs, network, publish) starts without it.
module.exports = require(require('node:path').join(__dirname, 'netlink.js'));
