"""Layer 7: submitit launcher, preflight checks and the ASR job, run from a login node."""
