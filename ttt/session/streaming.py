"""Streaming entry point: ``TTTLMGen``, moshi's ``LMGen`` with the TTT chunk updates driven from
the host between CUDA-graph replays.

A CUDA graph replays the kernels captured once, so a fast-weight update decided by Python inside
the graphed ``forward_text`` would be frozen (the seeds' TTT never updated this way). Here the
graphed step only buffers Z/X₀ and applies the current fast weight; after each step the host,
which knows the token count of every row without reading the device, runs the chunk update
outside the graph whenever a chunk has just filled. On CPU (graphs disabled) the TTT layers
update themselves and this class behaves exactly like ``LMGen``.
"""
from __future__ import annotations

import torch
from moshi.models.lm import LMGen
from moshi.utils.compile import _is_cuda_graph_enabled

from ttt.moshi.gating import TTTGating
from ttt.moshi.surgery import ttt_layers


class TTTLMGen(LMGen):
    """Drop-in ``LMGen`` for models prepared with :func:`ttt.apply_ttt`."""

    def _init_streaming_state(self, batch_size: int):
        state = super()._init_streaming_state(batch_size)
        # Only In-Place layers need a host driver; the TTT-MLP hybrid commits its mini-batches
        # with device-side selects inside the graph.
        self._ttt = [m for m in ttt_layers(self.lm_model).values() if isinstance(m, TTTGating)]
        for layer in self._ttt:
            layer._streaming_state.driven = True
        return state

    @torch.no_grad()
    def _step(self, input_tokens, depformer_replace_tokens=None):
        state = self._streaming_state
        # Exactly the condition under which moshi's CUDAGraphed runs the step without Python
        # (NO_CUDA_GRAPH=1 makes it call forward_text eagerly, and the layers update themselves).
        graphed = state is not None and not state.graphed_main.disable and _is_cuda_graph_enabled()
        out = super()._step(input_tokens, depformer_replace_tokens)
        if graphed:
            for layer in self._ttt:
                layer.advance(1)
                layer.update_full_chunks()
        return out
