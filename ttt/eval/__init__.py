"""Layer 4: data, metrics, generation, one matrix cell, training and the positive control."""
