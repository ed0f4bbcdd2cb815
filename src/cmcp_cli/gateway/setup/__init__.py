"""`cmcp init`: a working folder (config, starter policy bundle, pinned catalog) written
for one upstream, and checked as `cmcp validate-config` checks it."""
