"""A session's proof: its chain, its attestation and, at the end, its signed claim."""
