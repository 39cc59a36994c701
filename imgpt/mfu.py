"""Model FLOPs utilization: the FLOPs a training step needed, over what the GPU could have done in that time.

FLOPs are counted from what ran, per example, not as 6 x parameters x tokens. That shortcut counts the tied
embedding/output matrix as if the head ran on every position (with zero-weight positions skipped it runs on
few), and it leaves out attention and the frozen reference model of --kl_coef. Padding is not counted: MFU
measures useful work, so padding shows up as a lower MFU. Only matrix multiplies count (layer norms, GELU and
softmax are a few percent); a backward pass costs twice its forward.
"""
from __future__ import annotations

# Dense (no sparsity) tensor-core peaks in FLOP/s, from NVIDIA's data sheets, by the precision the matmuls ran
# in: bf16 (or fp16) autocast, float32 with TF32 matmuls, plain float32. (name parts, peaks): first match wins.
PEAKS: list[tuple[tuple[str, ...], dict[str, float]]] = [
    (("H100", "NVL"), dict(bf16=835e12, tf32=418e12, fp32=60e12)),
    (("H100", "PCIE"), dict(bf16=756e12, tf32=378e12, fp32=51e12)),
    (("H100", "HBM3"), dict(bf16=989e12, tf32=495e12, fp32=67e12)),  # SXM: "NVIDIA H100 80GB HBM3"
    (("H100", "SXM"), dict(bf16=989e12, tf32=495e12, fp32=67e12)),
    (("H200", "NVL"), dict(bf16=835e12, tf32=418e12, fp32=60e12)),
    (("H200",), dict(bf16=989e12, tf32=495e12, fp32=67e12)),  # SXM: "NVIDIA H200"
    (("B200",), dict(bf16=2250e12, tf32=1100e12, fp32=75e12)),
    (("A100",), dict(bf16=312e12, tf32=156e12, fp32=19.5e12)),  # SXM and PCIe alike
    (("L40S",), dict(bf16=362e12, tf32=183e12, fp32=91.6e12)),
]


def peak_flops(device_name: str, precision: str) -> float | None:
    """Peak FLOP/s of a GPU named like torch.cuda.get_device_name() for precision 'bf16', 'fp16', 'tf32' or
    'fp32'; None for a GPU not in the table (an H100 whose name says neither SXM/HBM3 nor PCIe nor NVL too)."""
    name = device_name.upper()
    precision = "bf16" if precision == "fp16" else precision
    return next((peaks[precision] for parts, peaks in PEAKS if all(p in name for p in parts)), None)


def forward_flops(n_layer: int, n_embd: int, vocab_size: int, lengths: list[int], head_positions: int) -> float:
    """FLOPs of one forward pass over documents of `lengths` tokens, the output head on `head_positions` of them.

    Per token and layer the four weight matrices (qkv 3C^2, projection C^2, MLP 8C^2) cost 2 x 12C^2. Causal
    attention over a document of n tokens computes n(n+1)/2 query-key pairs, each a C-long dot product in
    q k^T and again in attention x v: 2 x 2C per pair. The head costs 2CV per scored position."""
    tokens = sum(lengths)
    pairs = sum(n * (n + 1) // 2 for n in lengths)
    return n_layer * (24 * n_embd**2 * tokens + 4 * n_embd * pairs) + 2 * n_embd * vocab_size * head_positions


def training_flops(n_layer: int, n_embd: int, vocab_size: int, lengths: list[int], head_positions: int,
                   reference: bool = False) -> float:
    """FLOPs of a training step: forward + backward (2x forward) of the model, plus the forward of a frozen
    reference model (--kl_coef) over the same positions."""
    fwd = forward_flops(n_layer, n_embd, vocab_size, lengths, head_positions)
    return 3 * fwd + (fwd if reference else 0.0)


def precision_of(amp_dtype_name: str | None, tf32: bool) -> str:
    """'bf16' / 'fp16' under autocast, else 'tf32' when float32 matmuls use TF32, else 'fp32'."""
    if amp_dtype_name is not None:
        return amp_dtype_name
    return "tf32" if tf32 else "fp32"
