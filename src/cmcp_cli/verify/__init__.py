"""The offline verifier of claims and audit logs: no network, no gateway."""
