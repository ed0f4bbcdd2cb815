"""The hash-chained audit log: entries, per-session chains, the SQLite store, replay."""
