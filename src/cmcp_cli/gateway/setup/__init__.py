"""What a gateway serves, written before it serves: `cmcp init` (a working folder for one
upstream: config, starter policy bundle, pinned catalog), `cmcp catalog pin|diff` (the
catalog against what the upstreams advertise) and the catalog pinned at first contact."""
