"""The positive controls: does TTT help where content recurs beyond the attention context (held-out gains, offset sets, the suite report)."""
