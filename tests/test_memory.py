"""The memory model of a training step (imgpt/memory.py) against what the step actually saves, the micro-batch
train.py picks on CUDA from it, and the two ways to need less memory for the same update: a chunked head + loss
and activation checkpointing. A CUDA out-of-memory error inside a step ends in one line."""
import os

import pytest
import torch

import train as T
from conftest import tiny_run
from cuda_sim import CudaSim
from imgpt import memory
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import run_cli
from imgpt.distributed import Dist
from loss import StepLoss
from model import GPT, GPTConfig, chunked_head_cross_entropy, weighted_cross_entropy

SIZES = [dict(n_layer=2, n_head=4, n_embd=64, vocab_size=1000, rows=2, T=96),
         dict(n_layer=3, n_head=6, n_embd=96, vocab_size=3000, rows=3, T=64),
         dict(n_layer=4, n_head=8, n_embd=128, vocab_size=5000, rows=2, T=128)]


def measured_saved_bytes(model: GPT, idx: torch.Tensor, weights: torch.Tensor, head_chunk: int = 0) -> int:
    """Bytes of the distinct storages the training step's forward (loss.StepLoss, scored positions by flat index
    as collate gives them) saves for backward under bf16 autocast, the parameters themselves left out."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    select = weights.flatten().nonzero().squeeze(1)
    B, T = idx.shape
    pos, doc = torch.arange(T).expand(B, T), torch.zeros(B, T, dtype=torch.long)
    seen = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        StepLoss(model, skip_zero=True, neftune_alpha=0.0, head_chunk=head_chunk)(idx, idx, weights, pos, doc, select)
    return sum(seen.values())


@pytest.mark.parametrize("chunk, recompute", [(0, False), (64, False), (0, True)])
@pytest.mark.parametrize("size", range(len(SIZES)))
def test_the_memory_model_predicts_the_saved_bytes_at_three_sizes(size, chunk, recompute):
    """Activations per token and layer, the head per scored position, the half copies of the weight matrices
    (chunked, the head's is made again for each chunk, not kept; checkpointed, the blocks' are): within
    memory.SAVED_TOLERANCE of the bytes the step saves, IM (every position scored) and IT (a third); plain, with a
    chunked head, and with activation checkpointing."""
    s = dict(SIZES[size])
    rows, T_ = s.pop("rows"), s.pop("T")
    torch.manual_seed(0)
    config = GPTConfig(block_size=256, **s)
    model = GPT(config).train()
    model.grad_checkpoint = recompute
    idx = torch.randint(0, s["vocab_size"], (rows, T_))
    for weights in (torch.ones(rows, T_), (torch.arange(T_) >= 2 * T_ // 3).float().expand(rows, T_)):
        scored = int(weights.count_nonzero())
        predicted = memory.saved_bytes(config, rows * T_, scored,
                                       memory.StepShape(half=True, head_chunk=chunk, grad_checkpoint=recompute))
        kept = [model.lm_head] if recompute else [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
        predicted += 2 * sum(m.weight.numel() for m in kept if not (chunk and m is model.lm_head))  # half copies
        measured = measured_saved_bytes(model, idx, weights, chunk)
        assert abs(predicted - measured) / measured < memory.SAVED_TOLERANCE, (predicted, measured)


def preset_params(name: str) -> tuple[GPTConfig, int]:
    from model import expected_shapes
    config = GPTConfig.preset(name)
    return config, sum(s.numel() for s in expected_shapes(config).values())


@pytest.mark.parametrize("name, micro", [("gpt2", 32), ("gpt2-medium", 32), ("gpt2-large", 16), ("gpt2-xl", 8)])
def test_with_the_defaults_every_preset_fits_80_gb_at_1024_tokens(name, micro):
    """The paper's batch of 128 on one H100 (79 GiB free), IM on rows of 1024 tokens, bf16: the chosen micro-batch
    fits by the model; the old fixed 32 rows did not fit gpt2-large or gpt2-xl (~93 and ~140 GiB by it)."""
    c, n = preset_params(name)
    free = 79 * memory.GiB
    chosen, peak = memory.choose_micro_batch(c, n, 128, 1024, free, memory.StepShape())
    assert chosen == micro and peak <= free * memory.USABLE < 80e9
    old = memory.step_peak_bytes(c, n, 32 * 1024, 32 * 1024, memory.StepShape())
    assert (old > free) == (name in ("gpt2-large", "gpt2-xl"))
    ddp = memory.choose_micro_batch(c, n, 16, 1024, free, memory.StepShape(ddp=True))  # 8 GPUs: 16 each
    assert ddp[1] <= free * memory.USABLE and ddp[0] <= 16


def test_a_chunked_head_gives_the_gradients_of_the_whole_head():
    """float32: loss and the gradients of the head's input and (tied) weight equal to 1e-6, chunks of 7 rows over
    30 positions (a short last chunk)."""
    torch.manual_seed(0)
    h = torch.randn(30, 16, requires_grad=True)
    w = torch.randn(50, 16, requires_grad=True)
    targets, weights = torch.randint(0, 50, (30,)), torch.rand(30) * (torch.rand(30) > 0.3)
    whole, wsum = weighted_cross_entropy(h @ w.T, targets, weights)
    g_whole = torch.autograd.grad(whole, (h, w))
    chunked, wsum_c = chunked_head_cross_entropy(h, w, targets, weights, chunk=7)
    g_chunked = torch.autograd.grad(chunked, (h, w))
    assert torch.allclose(chunked, whole, rtol=0, atol=1e-6) and wsum_c == wsum
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(g_chunked, g_whole))


@pytest.mark.parametrize("knob", [dict(head_chunk=5), dict(grad_checkpoint=True)])
def test_chunked_head_and_activation_checkpointing_give_the_same_update(tmp_path, knob):
    """Three training steps with dropout (the recomputed blocks draw the same masks) and IM: the weights equal
    those of the plain run to 1e-6, float32."""
    runs = {}
    for name, kw in (("plain", {}), ("knob", knob)):
        T.train(tiny_run(tmp_path / name, max_steps=3, dropout=0.1, loss="im", **kw))
        runs[name] = load_checkpoint(str(tmp_path / name / "out" / "ckpt.pt"))["model"]
    assert all(torch.allclose(runs["plain"][k], runs["knob"][k], rtol=0, atol=1e-6) for k in runs["plain"])


def test_on_cuda_the_micro_batch_is_what_fits_the_free_memory(tmp_path, monkeypatch, capsys):
    """No --micro_batch_size on "cuda": the whole share of the batch (8) when memory is plenty; with only enough
    free memory for 2 rows of the longest example by the model, 2 (and 4 micro-steps), said in one startup line;
    a given --micro_batch_size is kept."""
    with CudaSim(monkeypatch) as sim:
        s = T.setup(tiny_run(tmp_path, device="cuda", micro_batch_size=None), Dist(device="cuda:0"))
        assert (s.cfg.micro_batch_size, s.accum) == (8, 1)
        c = s.model.config
        longest = max(len(e.ids) - 1 for e in s.train)
        two = memory.step_peak_bytes(c, s.model.num_params(), 2 * longest, 2 * longest, memory.StepShape())
        sim.memory = (int(two / memory.USABLE) + 1, 80 * memory.GiB)
        s = T.setup(tiny_run(tmp_path, device="cuda", micro_batch_size=None, overwrite=True), Dist(device="cuda:0"))
        assert (s.cfg.micro_batch_size, s.accum) == (2, 4)
        line = f"micro-batch 2 per GPU (auto, imgpt/memory.py): its longest, 2 x {longest} tokens"
        assert line in capsys.readouterr().out
        s = T.setup(tiny_run(tmp_path, device="cuda", overwrite=True), Dist(device="cuda:0"))
        assert s.cfg.micro_batch_size == 4  # tiny_run's --micro_batch_size 4


def test_out_of_memory_in_a_step_is_one_line_and_the_checkpoint_stays(tmp_path, monkeypatch, capsys):
    """torch.cuda.OutOfMemoryError at step 3 (after the checkpoint of step 2): exit 2 as any error, one line naming
    the micro-batch, its tokens, the memory asked and free and the flag, and ckpt.pt still the step-2 one."""
    real_step = T.train_step

    def step(s, ids, batches):
        if s.prog.step == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total "
                                              "capacity of 79.11 GiB of which 3.19 GiB is free. Including non-PyTorch "
                                              "memory, this process has 75.90 GiB memory in use.")
        return real_step(s, ids, batches)

    monkeypatch.setattr(T, "train_step", step)
    with CudaSim(monkeypatch):
        cfg = tiny_run(tmp_path, device="cuda", max_steps=4, eval_interval=2)
        with pytest.raises(SystemExit) as e:
            run_cli(lambda: T.train(cfg))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]  # the rest: the progress bar
    assert e.value.code == 2 and len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("error: CUDA out of memory at step 3: micro-batch of 4 rows, ")
    assert "asked 20.00 GiB with 3.19 GiB free on cuda; lower --micro_batch_size" in lines[0]
    assert load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))["step"] == 2
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tmp")]


def test_a_resumed_run_may_change_its_memory_knobs_and_keeps_its_update(tmp_path):
    """After an out-of-memory stop, the line's advice works on resume: --micro_batch_size, --grad_checkpoint and
    --head_chunk are run control (the same update), so a resumed run takes them and ends where a straight run does."""
    T.train(tiny_run(tmp_path / "whole", max_steps=4))
    T.train(tiny_run(tmp_path / "cut", max_steps=4, stop_step=2))
    T.train(tiny_run(tmp_path / "cut", max_steps=4, init_from="resume", micro_batch_size=2, grad_checkpoint=True,
                     head_chunk=3))
    a, b = (load_checkpoint(str(tmp_path / run / "out" / "ckpt.pt")) for run in ("whole", "cut"))
    assert b["step"] == 4 and b["config"]["micro_batch_size"] == 2
    assert all(torch.allclose(a["model"][k], b["model"][k], rtol=0, atol=1e-6) for k in a["model"])
