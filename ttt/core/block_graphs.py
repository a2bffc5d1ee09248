"""CUDA graphs of a TTT layer's streamed block update: the update's ≈ 150 small kernels replayed
as one graph launch, so a teacher-forced block costs the update's kernels, not its host time.

At Moshi 7B on an H200 the update of one TTT layer and 2,048-frame block ran 1.1 ms of kernels in
a 3 ms span: Python and launches, the GPU idle in between (docs/gpu-performance.md). The update
is pure device work once its control flow is fixed by a few host values (batch, length, which
chunks are recorded, dtypes), so it is captured once per such key and replayed.

How a replay stays the eager computation:
- the key holds every host value the function's control flow reads, and the address, shape and
  dtype of every tensor it reads or writes in place (the streaming state, the cached weights): a
  graph replays only onto tensors at the addresses it was captured with, whatever objects they are
  now (a new session whose state lands at the same addresses reuses the graph; one elsewhere is
  captured anew);
- the inputs are copied into static buffers and the outputs copied out of static buffers (both
  allocated outside any graph, shared by every graph of the same shapes); everything else a graph
  allocates is an intermediate, in one memory pool per device shared by all graphs, so graphs may
  replay in any order;
- the kernels: a shape runs eagerly first in the process (Triton compiles, cuBLAS picks its
  algorithms), and is captured right after that eager call, so a warm-up pass leaves the graphs
  its timed pass replays.

Off with ``TTT_BLOCK_GRAPHS=0`` (or upstream's ``NO_CUDA_GRAPH=1``), off on CPU and inside
another capture. A capture that fails turns the graphs off for the rest of the process, with one
warning: a half-begun capture can leave torch's CUDA state (its RNG's capture bookkeeping)
unusable for further captures.
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from typing import Callable, Sequence

import torch

_OFF = {"0", "no", "n", "false", "off"}
# Per process: shapes whose eager call ran (kernels compiled and chosen), the memory pool and the
# capture stream of each device, static buffers by (shape, dtype, device).
_warm: set = set()
_pools: dict = {}
_keepers: dict = {}  # per device, the graph that holds its pool open (see _capture)
_streams: dict = {}
_statics: OrderedDict = OrderedDict()
_broken: list = []  # the first capture failure's message: graphs are off from then on
MAX_STATICS = 12  # static tensors kept (a 7B layer's 2,048-frame block: 80 MB of inputs/outputs)


def enabled(device: torch.device) -> bool:
    """Whether block updates on ``device`` may run as CUDA graphs now."""
    if device.type != "cuda" or _broken or torch.cuda.is_current_stream_capturing():
        return False
    if os.environ.get("TTT_BLOCK_GRAPHS", "1").lower() in _OFF:
        return False
    return os.environ.get("NO_CUDA_GRAPH", "").lower() in _OFF | {""}


def tensor_key(tensors: Sequence[torch.Tensor | None]) -> tuple:
    """Where and what each tensor is: what a captured graph assumes of it."""
    return tuple(None if t is None else (t.data_ptr(), tuple(t.shape), t.stride(), t.dtype)
                 for t in tensors)


def _static(shape: torch.Size, dtype: torch.dtype, device: torch.device, slot: str) -> torch.Tensor:
    key = (slot, tuple(shape), dtype, device)
    if key not in _statics:
        with torch.inference_mode(False), torch.no_grad():
            _statics[key] = torch.empty(shape, dtype=dtype, device=device)
        while len(_statics) > MAX_STATICS:  # graphs holding an evicted one keep it alive
            _statics.popitem(last=False)
    _statics.move_to_end(key)
    return _statics[key]


def _capture(device: torch.device, work: Callable) -> torch.cuda.CUDAGraph:
    """``work`` captured on the device's capture stream into its shared memory pool."""
    if device not in _pools:
        _streams[device] = torch.cuda.Stream(device)
        # A graph of its own holds the pool open for the process. torch releases a private pool
        # when its last graph dies (a cell's model rebuilt, a layer's graphs evicted), and a later
        # capture into the released id fails an internal assert of its allocator (torch 2.11,
        # seen on an H200: every capture of the next model then failed).
        _pools[device] = torch.cuda.graph_pool_handle()
        _keepers[device] = _capture(device, lambda: torch.ones(1, device=device).add_(1))
    stream = _streams[device]
    graph = torch.cuda.CUDAGraph()
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        # the graph's own API, not torch.cuda.graph(): that one synchronizes, collects
        # garbage and empties the allocator's cache at every capture
        graph.capture_begin(pool=_pools[device], capture_error_mode="thread_local")
        try:
            work()
        finally:
            graph.capture_end()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph


class _Captured:
    """One graph with the static tensors it reads its inputs from and writes its outputs to."""

    def __init__(self, fn: Callable, inputs: Sequence[torch.Tensor], outputs: Sequence[tuple]):
        device = inputs[0].device
        self.inputs = [_static(x.shape, x.dtype, device, f"in{i}") for i, x in enumerate(inputs)]
        self.outputs = [_static(shape, dtype, device, f"out{i}") for i, (shape, dtype) in enumerate(outputs)]
        self.graph = _capture(device, lambda: [s.copy_(y) for s, y in zip(
            self.outputs, fn(*self.inputs), strict=True)])

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        for static, x in zip(self.inputs, inputs):
            static.copy_(x)
        self.graph.replay()
        return [y.clone() for y in self.outputs]


class BlockGraphs:
    """A layer's captured block updates, the most recently used ``capacity`` of them."""

    def __init__(self, capacity: int = 6) -> None:
        self.capacity = capacity
        self.graphs: OrderedDict = OrderedDict()
        self.captures = 0
        self.replays = 0

    def run(self, fn: Callable, shape_key: tuple, inputs: Sequence[torch.Tensor],
            bound: Sequence[torch.Tensor | None], outputs: Sequence[tuple]) -> list[torch.Tensor]:
        """``fn(*inputs)``: tensors of the (shape, dtype) ``outputs`` name; it may write ``bound``
        tensors in place and read others. Replayed from a graph when one was captured for
        ``shape_key`` (every host value ``fn``'s control flow reads) and ``bound`` (every tensor
        ``fn`` touches other than the inputs) at their current addresses; else captured now, or
        run eagerly (then captured) the first time its shapes run in this process."""
        device = inputs[0].device
        if not enabled(device):
            return list(fn(*inputs))
        shapes = tuple((tuple(x.shape), x.dtype) for x in inputs)
        graph_key = (shape_key, shapes, tensor_key(bound))
        graph = self.graphs.get(graph_key)
        if graph is None:
            warm = (shape_key, shapes, device)
            eager = warm not in _warm
            results = list(fn(*inputs)) if eager else None
            _warm.add(warm)
            graph = self._capture(fn, graph_key, inputs, outputs)
            if eager or graph is None:
                return results if eager else list(fn(*inputs))
        self.graphs.move_to_end(graph_key)
        self.replays += 1
        return graph(inputs)

    def _capture(self, fn, graph_key, inputs, outputs) -> _Captured | None:
        try:
            graph = _Captured(fn, inputs, outputs)
        except Exception as exc:  # noqa: BLE001 - any capture failure: graphs off from now on
            _broken.append(f"{type(exc).__name__}: {exc}")
            warnings.warn(f"TTT block update: CUDA graph capture failed ({_broken[0]}); block "
                          "updates run eagerly for the rest of this process")
            return None
        self.captures += 1
        self.graphs[graph_key] = graph
        while len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)
        return graph
