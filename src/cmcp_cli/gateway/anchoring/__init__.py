"""Anchoring every claim's TRACE record in a transparency service (docs/anchoring.md)."""
