"""Layer 1: the TTT math on plain tensors; torch only, never moshi."""
