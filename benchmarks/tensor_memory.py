"""Peak bytes of live tensors during a piece of PyTorch code, on any device (the CPU has no allocator statistics).

`PeakTensorMemory` is a `TorchDispatchMode`: every tensor storage an ATen operator creates while the mode is active is
counted from then until it is freed, which a weak reference to the storage reports. Outputs that share a storage with
one of the operator's inputs (views such as a weight's transpose, in-place results) allocate nothing and are skipped. Tensors that existed before (weights, inputs) are not counted, so `peak_bytes` is what the code
needed on top of them — the CPU counterpart of `torch.cuda.max_memory_allocated() - memory_allocated()` before,
without the allocator's rounding and without scratch space a kernel allocates outside tensors.

    with PeakTensorMemory() as memory:
        model(**batch)
    memory.peak_bytes
"""

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakTensorMemory(TorchDispatchMode):
    """Live and peak bytes of the tensor storages created while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._tracked: dict[int, weakref.ref] = {}  # id(storage) → weak reference whose callback frees its bytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(value.untyped_storage()) for value in tree_leaves((args, kwargs)) if isinstance(value, torch.Tensor)}
        for value in tree_leaves(out):
            if isinstance(value, torch.Tensor) and id(value.untyped_storage()) not in inputs:
                self._track(value.untyped_storage())
        return out

    def _track(self, storage: torch.UntypedStorage) -> None:
        key = id(storage)
        if key in self._tracked and self._tracked[key]() is storage:
            return  # an output listed twice, or a storage counted by an earlier operator
        size = storage.nbytes()

        def free(_reference, key=key, size=size) -> None:
            self.live_bytes -= size
            self._tracked.pop(key, None)

        self._tracked[key] = weakref.ref(storage, free)
        self.live_bytes += size
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
