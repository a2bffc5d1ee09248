"""Layer 3: a streaming session over a patched model: TTTLMGen, snapshots, telemetry, diagnostics."""
