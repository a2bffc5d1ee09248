"""Training a Moshi checkpoint with (or without) TTT layers: the loop, its batches, its held-out losses, probes and resumable state."""
