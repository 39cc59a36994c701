"""A CUDA-faithful test tier on the CPU: tensors that keep their data on the CPU but behave as CUDA tensors do for
placement, so the real programs' GPU paths run in CI and fail on the bugs a GPU would show.

    with CudaSim(monkeypatch) as sim:      # torch.cuda.is_available() is True, an "NVIDIA H100 80GB HBM3"
        train.train(cfg_with_device_cuda)  # every tensor the program puts on "cuda" is a CudaTensor
        assert sim.syncs == [...]           # the host syncs it made, by name

What it checks, as CUDA does: a tensor on "cuda" reports cuda:N, N the current device when it was made (set_device)
or the one named (device, is_cuda, get_device); an operator that mixes it with a CPU tensor, or with another GPU's,
raises "Expected all tensors to be on the same device" (0-dim CPU tensors are allowed, as CUDA allows them: they are
scalars); `.numpy()` raises; `.item()`, `.tolist()`, `.cpu()`, `.to("cpu")`, `bool()`, `int()`, `float()`,
`equal`, `allclose`, `bincount` and data-dependent shapes (nonzero, boolean-mask indexing and index_put_) are
counted as host syncs; host-to-device copies that make the host wait (blocking, or non_blocking from unpinned
memory) are counted apart (`sim.copies`); a non_blocking device-to-host copy holds NaN until something waits for the
device; each GPU has its own simulated random state (random ops on its tensors draw from it, torch.manual_seed
seeds it, get/set_rng_state read and write it); the varlen kernel is bound to the installed varlen_attn's signature
and refuses what flash refuses (offsets, max length, head size, strides); `torch.autocast("cuda", ...)` casts as
autocast does (the CPU's cast lists underneath); checkpoints written from "cuda" tensors carry their "cuda:N"
location tag, so loading them without map_location fails on a CPU-only machine as it does for real; collectives
refuse CPU tensors when the simulated backend is NCCL; torch.cuda.mem_get_info answers `sim.memory`.

What it cannot see: kernels (no CUDA kernel runs: FlashAttention and its varlen kernel, fused optimizers and cuBLAS
numerics are the CPU's; autocast uses the CPU's cast lists), streams and asynchronous errors, NCCL itself
(collectives run on gloo underneath; torch's C++ DDP cannot read these tensors, so tests use a stand-in), memory (no
allocator, no out-of-memory; memory statistics are zeros; pinning only marks the copy), attention dropout (the
CPU's decomposition makes host tensors), and torch.compile (dynamo does not trace these tensors; inductor/triton
never run). Modes are per thread: a background thread's factory calls with
device="cuda" are not simulated (imgpt's prefetch thread only collates and pins, on the CPU).

How: CudaTensor is a wrapper subclass whose real device is the CPU (so autograd and C++ code run) while Python sees
cuda:N (__torch_function__ answers .device, .is_cuda, ...); __torch_dispatch__ checks placement and unwraps;
a TorchFunctionMode turns device="cuda" factories and .to("cuda") into CudaTensors; monkeypatches make torch.cuda,
torch.autocast("cuda"), torch.Generator(device="cuda"), checkpoints' location tags and collectives answer as on a GPU.
"""
from __future__ import annotations

import contextlib
import functools
import inspect

import torch
import torch.distributed as dist
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

CUDA_DEFAULT_SEED = 67280421310721  # each CUDA generator's seed until torch.manual_seed
DEVICE_NAME = "NVIDIA H100 80GB HBM3"
SAME_DEVICE = "Expected all tensors to be on the same device, but found at least two devices, {} and {}!"


def is_cuda_device(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


class CudaTensor(torch.Tensor):
    """A tensor "on cuda:N" whose data (`_data`) lives on the CPU. Autograd and the dispatcher see a CPU tensor
    (so backward runs without a CUDA build); Python sees cuda:N (N = `index`, the current device when it was made
    unless named), and every operator checks placement."""

    _data: torch.Tensor
    index: int

    @staticmethod
    def __new__(cls, data: torch.Tensor, requires_grad: bool = False, index: int | None = None):
        assert type(data) is torch.Tensor and data.device.type == "cpu", type(data)
        r = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(),
                                                storage_offset=data.storage_offset(), dtype=data.dtype,
                                                layout=data.layout, device=data.device, requires_grad=requires_grad)
        r._data = data.detach()
        r.index = SIM.current if index is None else index
        return r

    def __init__(self, data, requires_grad=False, index=None):  # __new__ did everything
        pass

    def __repr__(self) -> str:
        return f"CudaTensor({self._data!r}, device='cuda:{self.index}')"

    def __tensor_flatten__(self):  # a traceable wrapper: Module.to() swaps parameters in place (weight tying holds)
        return ["_data"], self.index

    @staticmethod
    def __tensor_unflatten__(inner, meta, outer_size, outer_stride):
        return CudaTensor(inner["_data"], index=meta)

    def __reduce_ex__(self, protocol):  # torch.save: the data, tagged with the location "cuda:N" (see CudaSim)
        SIM.saving[self._data.untyped_storage().data_ptr()] = self.index
        return self._data.__reduce_ex__(protocol)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handled = SIM.python_api(func, args, kwargs)
        if handled is not NotImplemented:
            return handled
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return SIM.dispatch(func, args, kwargs or {})


def wrap(t: torch.Tensor) -> CudaTensor:
    return t if isinstance(t, CudaTensor) else CudaTensor(t)


class _Sim:
    """The simulator's state (one per process): syncs seen, whether the machine has a GPU, the backend."""

    def __init__(self):
        self.active = False
        self.syncs: list[str] = []
        self.saving: dict[int, int] = {}  # storages being saved: their GPU
        self.backend = "gloo"  # "nccl" once init_process_group asked for it: then CPU tensors are refused
        self.in_api = 0
        self.to_host = 0  # inside move() to the host: the one _to_copy(device=cpu) that leaves the device
        self.copies: list[str] = []  # host-to-device copies that make the host wait: "blocking" or "unpinned"
        self.current = 0  # torch.cuda.current_device()
        self.cuda_rng: list[torch.Tensor] = []  # each GPU's random state (the CPU generator's state format)
        self.in_flight: list[tuple[torch.Tensor, torch.Tensor]] = []  # non-blocking device-to-host copies

    def count(self, name: str) -> None:
        if self.in_api == 0:
            self.syncs.append(name)
        self.land()  # the host waited for the device: copies in flight have landed

    @contextlib.contextmanager
    def cuda_random(self, index: int):
        """Draw from GPU `index`'s simulated generator instead of the CPU's (whose state is set aside)."""
        host = torch.get_rng_state()
        torch.set_rng_state(self.cuda_rng[index])
        try:
            yield
        finally:
            self.cuda_rng[index] = torch.get_rng_state()
            torch.set_rng_state(host)

    def land(self) -> None:
        """Fill the host buffers of non-blocking device-to-host copies: the device has finished them."""
        for dst, src in self.in_flight:
            dst.copy_(src)
        self.in_flight.clear()

    # -------------------------------------------------------------------- the Python API of a "cuda" tensor

    def python_api(self, func, args, kwargs):
        T = torch.Tensor
        leaves = tree_flatten((args, kwargs))[0]
        check_generator([t for t in leaves if isinstance(t, torch.Tensor)], leaves)  # the Python objects: here
        if func == T.device.__get__:  # property getters are new method-wrappers on each access: ==, not is
            return torch.device("cuda", args[0].index)
        if func == T.is_cuda.__get__:
            return True
        if func == T.is_cpu.__get__:
            return False
        if func is T.get_device:
            return args[0].index
        if func in (T.numpy, T.__array__):
            raise TypeError(f"can't convert cuda:{args[0].index} device type tensor to numpy. Use Tensor.cpu() to "
                            "copy the tensor "
                            "to host memory first.")
        if func in (T.is_pinned,):
            return False
        if func is T.pin_memory:
            raise RuntimeError("cannot pin 'torch.cuda.FloatTensor' only dense CPU tensors can be pinned")
        if func is T.untyped_storage:
            return args[0]._data.untyped_storage()
        if func is T.data_ptr:
            return args[0]._data.data_ptr()
        sync = {T.item: "item", T.tolist: "tolist", T.__bool__: "bool", T.__int__: "int", T.__float__: "float",
                T.__index__: "index", T.__format__: "format"}.get(func)
        if sync is not None:
            self.count(sync)
            self.in_api += 1
            try:
                with torch._C.DisableTorchFunctionSubclass():
                    return func(args[0]._data, *args[1:], **kwargs)
            finally:
                self.in_api -= 1
        if func in (T.to, T.cpu, T.cuda, T.type):
            return self.move(func, args, kwargs)
        return NotImplemented

    def move(self, func, args, kwargs):
        """Tensor.to / .cpu() / .cuda(): to the host is a sync and a copy; to "cuda" keeps a CudaTensor."""
        self_, rest = args[0], args[1:]
        T = torch.Tensor
        if func is T.cpu:
            device, dtype, copy = torch.device("cpu"), None, False
        elif func is T.cuda:
            device, dtype, copy = torch.device("cuda", SIM.current), None, False
        elif func is T.type:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        else:
            device, dtype, copy = parse_to(rest, kwargs)
        on_cuda = isinstance(self_, CudaTensor)
        to_cuda = is_cuda_device(device) or (device is None and on_cuda)
        dtype = dtype or self_.dtype
        non_blocking = kwargs.get("non_blocking", False) or any(a is True for a in rest)
        if to_cuda:  # to the named GPU, or for a bare "cuda" the current one (a dtype-only .to stays put)
            index = self_.index if device is None else SIM.current if device.index is None else device.index
            if on_cuda:
                if dtype == self_.dtype and not copy and index == self_.index:
                    return self_
                out = torch.ops.aten._to_copy.default(self_, dtype=dtype)
                out.index = index  # a copy to another GPU lands there
                return out
            if self_.requires_grad and torch.is_grad_enabled():
                raise NotImplementedError("cuda_sim: moving a tensor that requires grad onto cuda")
            if not (non_blocking and getattr(self_, "sim_pinned", False)):  # the host waits for this copy
                self.copies.append("unpinned" if non_blocking else "blocking")
            return CudaTensor(self_.detach().to(dtype=dtype, copy=True), index=index)
        if on_cuda and non_blocking and func is T.to:  # to the host without waiting: the buffer is not filled
            out = torch.full(self_.shape, float("nan") if dtype.is_floating_point else -7, dtype=dtype)
            self.in_flight.append((out, self_._data))  # until something waits for the device (land)
            return out
        if on_cuda:  # to the host: the host waits for the device
            self.count("cpu")
            self.to_host += 1
            try:
                return torch.ops.aten._to_copy.default(self_, dtype=dtype, device=torch.device("cpu"))
            finally:
                self.to_host -= 1
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    # -------------------------------------------------------------------- operators

    SYNC_OPS = {"aten::nonzero", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::masked_select",
                "aten::unique_dim", "aten::_unique2", "aten::repeat_interleave", "aten::equal", "aten::allclose",
                "aten::bincount"}  # a Python bool, or an output sized by the data: the host waits
    INDEX_OPS = {"aten::index", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_"}
    RANDOM_OPS = {"aten::native_dropout", "aten::bernoulli", "aten::bernoulli_", "aten::uniform_", "aten::normal_",
                  "aten::exponential_", "aten::random_", "aten::multinomial", "aten::randperm", "aten::rand_like",
                  "aten::randn_like", "aten::randint_like", "aten::geometric_", "aten::cauchy_", "aten::log_normal_"}

    def dispatch(self, func, args, kwargs):
        name = func._schema.name
        leaves, _ = tree_flatten((args, kwargs))
        tensors = [t for t in leaves if isinstance(t, torch.Tensor)]
        if name == "aten::_to_copy" and self.to_host:
            return func(args[0]._data, **kwargs)  # to the host: a plain CPU tensor
        if name == "aten::_to_copy" and kwargs.get("device") is not None:  # autograd and autocast name the
            kwargs = {**kwargs, "device": torch.device("cpu")}  # device underneath (the CPU): it stays on "cuda"
        if name == "aten::copy_" and not isinstance(args[0], CudaTensor):  # a device-to-host copy into a CPU tensor
            self.count("copy_")
            return func(args[0], args[1]._data, *args[2:], **kwargs)
        check = tensors
        if name == "aten::copy_":  # copies may cross devices
            check = []
        elif name in self.INDEX_OPS:
            check = [args[0]] + ([args[2]] if len(args) > 2 else [])  # indices may be on the CPU, as on CUDA
        cpu = [t for t in check if not isinstance(t, CudaTensor) and t.dim() > 0]
        gpus = sorted({t.index for t in check if isinstance(t, CudaTensor)})
        if cpu and gpus:
            raise RuntimeError(SAME_DEVICE.format(f"cuda:{gpus[0]}", "cpu") + f" (in {name})")
        if len(gpus) > 1:  # a rank's tensors on two GPUs (one made before set_device, say)
            raise RuntimeError(SAME_DEVICE.format(f"cuda:{gpus[0]}", f"cuda:{gpus[1]}") + f" (in {name})")
        here = next((t.index for t in tensors if isinstance(t, CudaTensor)), SIM.current)
        if name in self.SYNC_OPS or (name in self.INDEX_OPS and any(  # a boolean mask: nonzero underneath
                i is not None and i.dtype == torch.bool for i in args[1])):
            self.count(name)
        unwrap = lambda t: t._data if isinstance(t, CudaTensor) else t
        random = name in self.RANDOM_OPS and not any(isinstance(g, torch._C.Generator) for g in leaves)
        with self.cuda_random(here) if random else contextlib.nullcontext():  # the GPU's generator, not the CPU's
            out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        return tree_map(lambda t: CudaTensor(t, index=here) if type(t) is torch.Tensor else t, out) if name not in (
            "aten::_local_scalar_dense", "aten::is_nonzero") else out


SIM = _Sim()


def parse_to(args, kwargs):
    """(device, dtype, copy) of Tensor.to's argument forms: (device, dtype), (dtype), (tensor), keywords."""
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for a in args:
        if a is None or isinstance(a, bool):  # non_blocking, or Module.to's dtype None
            continue
        if isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            device, dtype = a.device, a.dtype
        elif isinstance(a, (str, torch.device, int)):
            device = torch.device(a) if not isinstance(a, int) else torch.device("cuda", a)
    return (torch.device(device) if device is not None else None), dtype, kwargs.get("copy", False)


class SimGenerator(torch._C.Generator):
    """torch.Generator(device="cuda"): a CPU generator marked as CUDA's, so that a sampler given the wrong one
    raises as CUDA does ("Expected a 'cuda' device type for generator")."""

    def __new__(cls, device="cpu"):
        g = super().__new__(cls, "cpu")
        g.sim_cuda = is_cuda_device(device)
        return g


def check_generator(tensors, leaves) -> None:
    on_cuda = any(isinstance(t, CudaTensor) for t in tensors)
    for g in leaves:
        if isinstance(g, torch._C.Generator) and getattr(g, "sim_cuda", False) != on_cuda:
            raise RuntimeError(f"Expected a '{'cuda' if on_cuda else 'cpu'}' device type for generator but found "
                               f"'{'cpu' if on_cuda else 'cuda'}'")


def simulated_varlen(installed):
    """torch.nn.attention.varlen.varlen_attn as CUDA runs it, called as the INSTALLED function's signature allows
    (a call that does not bind raises its TypeError; the wrapper shows that signature, so code reading it sees
    the installed one) and refusing what the flash kernel refuses: non-CUDA tensors, offsets that are not int32,
    not bf16/fp16, a GPU older than Ampere, a head size that is not a multiple of 8 up to 256, a last dimension
    that is not contiguous, offsets that do not start at 0, end at the token count and grow, and a max length
    below the longest document (flash would silently compute garbage). Computed as dense attention inside each
    document: its result, not its speed."""
    signature = inspect.signature(installed)

    @functools.wraps(installed)
    def varlen_attn(*args, **kwargs):
        a = signature.bind(*args, **kwargs)
        a.apply_defaults()
        query, key, value, cu_q = (a.arguments[n] for n in ("query", "key", "value", "cu_seq_q"))
        max_q, window = a.arguments["max_q"], a.arguments.get("window_size")
        if not all(isinstance(t, CudaTensor) for t in (query, key, value, cu_q)):
            raise RuntimeError("varlen_attn: FlashAttention only runs on CUDA tensors")
        if torch.cuda.get_device_capability() < (8, 0):
            raise RuntimeError("FlashAttention only supports Ampere GPUs or newer.")
        if query.dtype not in (torch.float16, torch.bfloat16) or cu_q.dtype != torch.int32:
            raise RuntimeError(f"FlashAttention only support fp16 and bf16 data type (got {query.dtype}, offsets "
                               f"{cu_q.dtype})")
        N, nh, hs = query.shape
        if hs % 8 or hs > 256 or key.shape != query.shape or value.shape != query.shape:
            raise RuntimeError(f"varlen_attn: head size {hs} must be a multiple of 8 up to 256, q/k/v one shape")
        if any(t.stride(-1) != 1 for t in (query, key, value)):
            raise RuntimeError("varlen_attn: Input tensor must have contiguous last dimension")
        offsets = cu_q._data.tolist()  # the simulator's own look: not a sync of the program
        lengths = [b - a for a, b in zip(offsets, offsets[1:])]
        if offsets[0] != 0 or offsets[-1] != N or min(lengths, default=0) < 0:
            raise RuntimeError(f"varlen_attn: cu_seq_q must run from 0 up to the {N} tokens, got {offsets}")
        if max(lengths, default=0) > max_q:
            raise RuntimeError(f"varlen_attn: max_q {max_q} is below the longest document ({max(lengths)} tokens)")
        assert window == (-1, 0), window  # causal: all that imgpt asks for
        doc = torch.searchsorted(cu_q[1:].long(), torch.arange(N, device=query.device), right=True)  # (N,)
        mask = (doc[:, None] == doc[None, :]) & torch.ones(N, N, dtype=torch.bool, device=query.device).tril()
        q, k, v = (t.transpose(0, 1) for t in (query, key, value))  # (nh, N, hs)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(0, 1)

    return varlen_attn


def pinned(t: torch.Tensor) -> torch.Tensor:
    """A copy in "pinned" host memory (the CPU build has none): marked, so that copies from it can be told apart."""
    with torch._C.DisableTorchFunctionSubclass():
        out = t.clone()
    out.sim_pinned = True
    return out


class _FactoryMode(TorchFunctionMode):
    """Factory functions given device="cuda" (torch.zeros, arange, tensor, full, ...) and a plain CPU tensor's
    .to("cuda") / .cuda() make CudaTensors; pinning is a no-op (the CPU build has no pinned memory)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        T = torch.Tensor
        leaves = tree_flatten((args, kwargs))[0]
        check_generator([t for t in leaves if isinstance(t, torch.Tensor)], leaves)
        plain = args and isinstance(args[0], torch.Tensor) and not isinstance(args[0], CudaTensor)
        if func in (T.to, T.cuda) and plain:
            return SIM.move(func, args, kwargs)
        if func is T.pin_memory and plain:
            return pinned(args[0])
        if is_cuda_device(kwargs.get("device")) and not (args and isinstance(args[0], torch.Tensor)
                                                        and func.__name__ not in ("tensor", "as_tensor")):
            named = torch.device(kwargs["device"]) if not isinstance(kwargs["device"], int) else torch.device(
                "cuda", kwargs["device"])
            index = SIM.current if named.index is None else named.index
            random = func.__name__ in ("rand", "randn", "randint", "randperm", "normal") and "generator" not in kwargs
            with SIM.cuda_random(index) if random else contextlib.nullcontext():
                out = func(*args, **{**kwargs, "device": "cpu"})
            return tree_map(lambda t: CudaTensor(t, index=index) if type(t) is torch.Tensor else t, out)
        return func(*args, **kwargs)


class _SimStream:
    """The current stream of the simulated GPU: nothing is ever graph-captured here."""

    def is_capturing(self) -> bool:
        return False


class CudaSim:
    """Turns the simulation on for a test (monkeypatch undoes every patch): torch.cuda answers as one H100 (or
    `devices` of them), factories and .to("cuda") make CudaTensors, autocast("cuda") casts, collectives check."""

    def __init__(self, monkeypatch, devices: int = 1, gpu_machine: bool = True, capability=(9, 0),
                 name: str = DEVICE_NAME):
        self.mp, self.devices, self.capability, self.name = monkeypatch, devices, capability, name
        self.gpu_machine = gpu_machine
        self.memory = (79 * 2 ** 30, 80 * 2 ** 30)  # (free, total) bytes torch.cuda.mem_get_info answers
        self.mode = _FactoryMode()
        self.peak = 0

    @property
    def syncs(self) -> list[str]:
        return SIM.syncs

    @property
    def copies(self) -> list[str]:
        return SIM.copies

    def reset(self) -> None:
        SIM.syncs.clear()
        SIM.copies.clear()

    def __enter__(self) -> "CudaSim":
        mp, c = self.mp, torch.cuda
        mp.setattr(c, "is_available", lambda: True)
        mp.setattr(c, "device_count", lambda: self.devices)
        SIM.current = 0

        def index_of(device) -> int:  # "cuda" (and None) is the current device, as in torch.cuda
            index = device if isinstance(device, int) else (SIM.current if device is None else
                                                            torch.device(device).index)
            index = SIM.current if index is None else index
            if not 0 <= index < self.devices:
                raise RuntimeError("CUDA error: invalid device ordinal")
            return index

        mp.setattr(c, "current_device", lambda: SIM.current)
        mp.setattr(c, "set_device", lambda device: setattr(SIM, "current", index_of(device)))
        mp.setattr(c, "_lazy_init", lambda: None)
        mp.setattr(c, "is_initialized", lambda: True)
        mp.setattr(c, "get_device_name", lambda device=None: self.name)
        mp.setattr(c, "get_device_capability", lambda device=None: self.capability)
        mp.setattr(c, "is_bf16_supported", lambda including_emulation=True: self.capability >= (8, 0)
                   or including_emulation)
        mp.setattr(c, "synchronize", lambda device=None: SIM.count("synchronize"))  # copies in flight land
        # torch.accelerator, which the optimizers ask about CUDA graph capture on a CUDA build (torch >= 2.14): the
        # machine's one accelerator is this GPU, its current stream never capturing
        mp.setattr(torch.accelerator, "current_accelerator", lambda check_available=False: torch.device("cuda"))
        mp.setattr(torch.accelerator, "is_available", lambda: True)
        mp.setattr(torch.accelerator, "device_count", lambda: self.devices)
        mp.setattr(torch.accelerator, "current_device_index", lambda: SIM.current)
        mp.setattr(torch.accelerator, "current_stream", lambda device=None: _SimStream())
        mp.setattr(torch.accelerator, "synchronize", lambda device=None: SIM.count("synchronize"))
        mp.setattr(c, "reset_peak_memory_stats", lambda device=None: None)
        mp.setattr(c, "max_memory_allocated", lambda device=None: 0)
        mp.setattr(c, "memory_allocated", lambda device=None: 0)
        mp.setattr(c, "empty_cache", lambda: None)
        mp.setattr(c, "mem_get_info", lambda device=None: self.memory)
        # each GPU's generator, simulated (not stubbed): dropout and noise on "cuda" tensors draw from the current
        # GPU's, torch.manual_seed seeds them all, and a checkpoint must save and restore the right one
        seeded = lambda seed: torch._C.Generator().manual_seed(seed).get_state()  # noqa: E731
        SIM.cuda_rng = [seeded(CUDA_DEFAULT_SEED) for _ in range(self.devices)]
        mp.setattr(c, "manual_seed", lambda seed: SIM.cuda_rng.__setitem__(SIM.current, seeded(seed)))
        mp.setattr(c, "manual_seed_all", lambda seed: SIM.cuda_rng.__setitem__(slice(None), [seeded(seed)] *
                                                                                 self.devices))
        mp.setattr(c, "get_rng_state", lambda device="cuda": SIM.cuda_rng[index_of(device)].clone())
        mp.setattr(c, "get_rng_state_all", lambda: [state.clone() for state in SIM.cuda_rng])
        mp.setattr(c, "set_rng_state", lambda state, device="cuda": SIM.cuda_rng.__setitem__(index_of(device),
                                                                                              state.clone()))
        mp.setattr(c, "set_rng_state_all", lambda states: [c.set_rng_state(st, i) for i, st in enumerate(states)])
        real_autocast, real_enabled = torch.autocast, torch.is_autocast_enabled
        # autocast("cuda") would only switch the CUDA dispatch key, which our CPU-backed tensors lack: the
        # CPU's autocast casts them instead (same dtypes; the CPU's op lists)
        autocast = lambda device_type, *a, **kw: real_autocast("cpu" if device_type == "cuda" else device_type, *a,
                                                               **kw)
        mp.setattr(torch, "autocast", autocast)
        mp.setattr(torch.amp, "autocast", autocast)
        mp.setattr(torch, "is_autocast_enabled",
                   lambda device_type=None: real_enabled("cpu" if device_type == "cuda" else device_type)
                   if device_type is not None else real_enabled())
        self._patch_grouping()
        mp.setattr(torch, "Generator", SimGenerator)
        try:  # torch >= 2.10; an older torch has no varlen kernel to simulate (imgpt then trains padded)
            import torch.nn.attention.varlen as varlen
            mp.setattr(varlen, "varlen_attn", simulated_varlen(varlen.varlen_attn))
        except ImportError:
            pass
        real_unbacked = torch._dynamo.decorators.mark_unbacked  # refuses wrapper subclasses; dynamo never traces
        mp.setattr(torch._dynamo.decorators, "mark_unbacked",  # these tensors anyway (see above): a no-op on them
                   lambda t, *a, **kw: None if isinstance(t, CudaTensor) else real_unbacked(t, *a, **kw))
        real_pin = torch.Tensor.pin_memory  # modes are per thread; collate pins in a background thread
        mp.setattr(torch.Tensor, "pin_memory", lambda t, *a, **kw: pinned(t) if not isinstance(t, CudaTensor) else
                   real_pin(t))
        self._patch_collectives()
        self._patch_serialization()
        SIM.active, SIM.syncs[:], SIM.copies[:], SIM.in_flight[:] = True, [], [], []
        self.mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.mode.__exit__(*exc)
        SIM.active, SIM.backend = False, "gloo"

    def _patch_grouping(self) -> None:
        """torch groups tensors by device in C++, which sees the CPU underneath: the groups of CudaTensors are
        keyed cuda:N again (clip_grad_norm_ and the optimizers move their results to that device)."""
        import torch.nn.utils.clip_grad as clip_grad
        import torch.optim.optimizer as optimizer
        import torch.utils._foreach_utils as foreach_utils
        real = foreach_utils._group_tensors_by_device_and_dtype

        def grouped(tensorlistlist, with_indices=False):
            out = real(tensorlistlist, with_indices)
            first = lambda lists: next((t for t in lists[0] if t is not None), None)  # noqa: E731
            return {((torch.device("cuda", first(v[0]).index) if isinstance(first(v[0]), CudaTensor) else device),
                     dtype): v
                    for (device, dtype), v in out.items()}

        for module in (foreach_utils, clip_grad, optimizer):
            if hasattr(module, "_group_tensors_by_device_and_dtype"):
                self.mp.setattr(module, "_group_tensors_by_device_and_dtype", grouped)

    # -------------------------------------------------------------------- checkpoints

    def _patch_serialization(self) -> None:
        import torch.serialization as S
        tag = lambda storage: f"cuda:{SIM.saving[storage.data_ptr()]}" if storage.data_ptr() in SIM.saving else None

        def deserialize(obj, location):
            if not location.startswith("cuda"):
                return None
            if not self.gpu_machine:
                raise RuntimeError("Attempting to deserialize object on a CUDA device but torch.cuda.is_available() "
                                   "is False. If you are running on a CPU-only machine, please use torch.load with "
                                   "map_location=torch.device('cpu') to map your storages to the CPU.")
            return obj  # loaded "on cuda" as CPU storage (the tensors come back plain: a known simplification)

        tag.cuda_sim = True  # a second simulator in the same test replaces the first one's entry
        registry = [entry for entry in S._package_registry if not getattr(entry[1], "cuda_sim", False)]
        self.mp.setattr(S, "_package_registry", registry)
        S.register_package(1, tag, deserialize)
        real_save = torch.save

        @functools.wraps(real_save)
        def save(*a, **kw):
            try:
                return real_save(*a, **kw)
            finally:
                SIM.saving.clear()

        self.mp.setattr(torch, "save", save)

    # -------------------------------------------------------------------- collectives

    def _patch_collectives(self) -> None:
        """NCCL refuses CPU tensors; gloo does the work on the CPU data underneath."""
        real_init, real = dist.init_process_group, {}

        def init(backend=None, *a, device_id=None, **kw):
            SIM.backend = backend or "gloo"
            return real_init("gloo", *a, **kw)

        self.mp.setattr(dist, "init_process_group", init)

        def checked(name):
            fn = getattr(dist, name)
            real[name] = fn

            def collective(*a, **kw):
                tensors = [t for t in tree_flatten((a, kw))[0] if isinstance(t, torch.Tensor)]
                if SIM.backend == "nccl" and any(not isinstance(t, CudaTensor) for t in tensors):
                    raise RuntimeError("No backend type associated with device type cpu")
                return fn(*tree_map(lambda t: t._data if isinstance(t, CudaTensor) else t, a),
                          **tree_map(lambda t: t._data if isinstance(t, CudaTensor) else t, kw))

            self.mp.setattr(dist, name, collective)

        for name in ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor"):
            checked(name)
