"""Canonical bytes, keys, signatures and the claim model."""
