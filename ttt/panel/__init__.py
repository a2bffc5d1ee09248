"""Layer 6: the blind listening panel (page, server, ratings)."""
