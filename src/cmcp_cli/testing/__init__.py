"""Test support that plugins reuse: the attestation provider contract suite."""
