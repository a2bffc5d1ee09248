"""Conversations a cell or training reads: manifests, audio, Mimi codes, synthetic speech and tones, recurrence sets."""
