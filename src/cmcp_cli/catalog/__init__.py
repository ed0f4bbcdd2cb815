"""The approved tool catalog: what each tool may be, and the hashes that pin it."""
