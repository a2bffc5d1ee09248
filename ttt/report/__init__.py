"""Layer 5: tables, verdicts and comparisons from a results tree; imports neither torch nor moshi."""
