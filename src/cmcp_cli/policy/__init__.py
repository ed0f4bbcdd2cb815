"""Policy bundles: loading, hashing, Cedar compilation and evaluation."""
