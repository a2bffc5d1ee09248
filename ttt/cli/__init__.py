"""Layer 8: ``python -m ttt`` and its commands."""
