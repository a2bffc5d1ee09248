"""Test-time training (In-Place TTT) and YaRN for upstream Kyutai Moshi, by module surgery."""
from .config import TTTConfig, YarnConfig
from .surgery import apply_ttt, remove_ttt, ttt_layers
from .streaming import TTTLMGen
from .telemetry import ttt_state
from .yarn import apply_yarn

__all__ = ["TTTConfig", "YarnConfig", "apply_ttt", "remove_ttt", "ttt_layers", "TTTLMGen", "ttt_state", "apply_yarn"]
__version__ = "0.1.0"
