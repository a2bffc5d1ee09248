"""Layer 2: everything that touches upstream moshi's modules: surgery, the TTT layers, YaRN, checkpoint loading."""
