// Bundles load netlink's native binary from beside themselves (dist/bin/netlink.node):
// esbuild cannot embed a .node file, and node-gyp-build's search would look elsewhere.
module.exports = () => require(require('node:path').join(__dirname, 'netlink.node'));
