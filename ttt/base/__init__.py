"""Layer 0: files, identities and output folders; no torch, no moshi (docs/architecture.md)."""
