"""Attestation providers: the plugin API, the plugin manager, the binding, software mode."""
