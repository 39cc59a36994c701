"""The CUDA-faithful tier: the real programs' GPU paths, run on the CPU under tests/cuda_sim.py, where a tensor on
"cuda" behaves as CUDA's do for placement (mixing it with a CPU tensor raises), `.numpy()` on it raises and host
syncs are counted. Each test here would fail on a device bug that the CPU-only tests cannot see (issue 18's flush
crashed every CUDA run at step 10 while the whole suite passed). What the tier cannot see: tests/cuda_sim.py."""
import dataclasses
import functools
import json
import os
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

import cuda_sim
import eval as ev
import sample
import train as T
from conftest import leave_spawned_worker, tiny_run
from cuda_sim import CudaSim, CudaTensor
from data import ASSISTANT, EOT, loss_weights
from imgpt import distributed
from imgpt.batching import plan_epoch
from imgpt.checkpoint import load_checkpoint
from imgpt.cli import make_config
from imgpt.train_config import resolve
from model import GPT, GPTConfig, load_model
from scripts.tools import export

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def sim(monkeypatch):
    with CudaSim(monkeypatch) as s:
        yield s


def log_records(out) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(out, "log.jsonl"))]


def steps_of(out) -> list[dict]:
    return [r for r in log_records(out) if "loss" in r]


# ----------------------------------------------------------------------------- the simulator itself

def test_the_simulator_refuses_what_cuda_refuses(sim):
    """Each rule, checked, so that a tier test passing means the rule held (and not that the simulator slept)."""
    x = torch.ones(3, 4, device="cuda")
    assert type(x) is CudaTensor and x.device == torch.device("cuda", 0) and x.is_cuda
    with pytest.raises(RuntimeError, match="same device"):
        torch.cat([x, torch.ones(3, 4)])
    with pytest.raises(RuntimeError, match="same device"):
        x + torch.ones(3, 4)
    assert (x * torch.tensor(2.0)).sum().item() == 24.0  # a 0-dim CPU tensor is a scalar: allowed, as on CUDA
    with pytest.raises(TypeError, match="cuda:0 device type tensor to numpy"):
        x.numpy()
    sim.reset()
    x.tolist(), bool(x.sum() > 0), x.cpu(), x.sum().item(), x[x > 0]
    assert sim.syncs == ["tolist", "bool", "cpu", "item", "aten::index"]
    assert type(x.cpu()) is torch.Tensor and type(x.to("cpu").to("cuda")) is CudaTensor
    assert x[torch.tensor([0, 2])].shape == (2, 4)  # CPU indices into a CUDA tensor: allowed, as on CUDA
    net = torch.nn.Linear(4, 2).to("cuda")
    assert net.weight.device.type == "cuda" and net(x).device.type == "cuda"
    with pytest.raises(RuntimeError, match="same device"):
        net(torch.ones(3, 4))
    with pytest.raises(RuntimeError, match="generator"):
        torch.multinomial(torch.ones(2, 3, device="cuda"), 1, generator=torch.Generator())  # a CPU generator
    assert torch.cuda.is_available() and torch.cuda.get_device_name() == "NVIDIA H100 80GB HBM3"


def test_each_simulated_gpu_is_its_own_device(monkeypatch):
    """A tensor made on "cuda" lands on the current device (set_device's), "cuda:1" on GPU 1; an operator mixing
    two GPUs raises, as CUDA does (a rank that made tensors before its set_device)."""
    with CudaSim(monkeypatch, devices=2):
        one = torch.ones(2, device="cuda:1")
        zero = torch.ones(2, device="cuda")
        assert one.device == torch.device("cuda", 1) and zero.get_device() == 0 and (one * 2).device.index == 1
        with pytest.raises(RuntimeError, match="cuda:0 and cuda:1"):
            one + zero
        torch.cuda.set_device(1)
        assert (one + torch.ones(2, device="cuda")).device.index == 1 and zero.to("cuda").device.index == 1
        net = torch.nn.Linear(2, 2).to("cuda:1")
        assert net(one).device.index == 1
        with pytest.raises(RuntimeError, match="cuda:0 and cuda:1"):
            net(zero)


def test_the_simulator_counts_copies_that_wait_and_hands_out_unfinished_ones(sim):
    """A host-to-device copy makes the host wait unless it is non_blocking from pinned memory: counted (a step
    must make none). A non-blocking device-to-host copy is unfinished until something waits for the device:
    read before that, its values are wrong (NaN here), as on CUDA."""
    x = torch.ones(3)
    x.to("cuda"), x.to("cuda", non_blocking=True), x.pin_memory().to("cuda", non_blocking=True)
    assert sim.copies == ["blocking", "unpinned"]
    y = torch.arange(4.0, device="cuda")
    early = y.to("cpu", non_blocking=True)
    assert torch.isnan(early).all()  # the copy has not landed: reading it now is the bug
    torch.cuda.synchronize()
    assert early.tolist() == [0.0, 1.0, 2.0, 3.0]
    late = y.to("cpu", non_blocking=True)
    y.sum().item()  # any wait for the device lands it too
    assert late.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_the_simulated_varlen_kernel_takes_the_installed_signature_and_refuses_what_flash_refuses(sim):
    """A call the installed varlen_attn cannot bind raises its TypeError; offsets that miss the token count, a max
    length below the longest document, a head size flash has no kernel for and a strided last dimension raise.
    model.varlen_attention's own call passes (all four documents, max length block_size)."""
    from model import varlen_attention
    attn = torch.nn.attention.varlen.varlen_attn
    q = torch.randn(10, 2, 16, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, 3, 7, 9, 10], dtype=torch.int32, device="cuda")
    assert varlen_attention(q, q, q, cu, 64).shape == (10, 2, 16)
    with pytest.raises(TypeError):
        attn(q, q, q, cu, cu, 64, 64, is_causal=True)  # torch 2.10's keyword: not this torch's
    with pytest.raises(RuntimeError, match="up to the 10 tokens"):
        attn(q, q, q, cu[:-1], cu[:-1], 64, 64, window_size=(-1, 0))
    with pytest.raises(RuntimeError, match="below the longest document"):
        varlen_attention(q, q, q, cu, 3)
    with pytest.raises(RuntimeError, match="head size 12"):
        varlen_attention(*(torch.randn(10, 2, 12, device="cuda", dtype=torch.bfloat16),) * 3, cu, 64)
    wide = torch.randn(10, 2, 32, device="cuda", dtype=torch.bfloat16)[..., ::2]  # head size 16, stride 2
    with pytest.raises(RuntimeError, match="contiguous last dimension"):
        varlen_attention(wide, wide, wide, cu, 64)


def test_the_simulator_counts_equal_allclose_bincount_and_boolean_writes_as_syncs(sim):
    """Each returns a Python bool or an output sized by the data (a boolean index_put_ runs nonzero underneath):
    the host waits for the device."""
    a = torch.arange(6.0, device="cuda")
    sim.reset()
    torch.equal(a, a)
    assert sim.syncs == ["aten::equal"]
    sim.reset()
    torch.allclose(a, a)
    assert sim.syncs == ["aten::allclose"]
    sim.reset()
    torch.bincount(a.long())
    assert sim.syncs == ["aten::bincount"]
    sim.reset()
    a[a > 2] = 0.0
    assert sim.syncs == ["aten::index_put_"]
    sim.reset()
    a[torch.tensor([0, 1])] = 1.0  # integer indices: no wait
    assert sim.syncs == []


# ----------------------------------------------------------------------------- training

MODES = {"it bf16": dict(loss="it"), "im bf16": dict(loss="im"), "pack": dict(loss="im", pack=True),
         "kl": dict(kl_coef=0.5), "fp16 + GradScaler": dict(dtype="float16"), "float32": dict(dtype="float32")}


@pytest.mark.parametrize("mode", MODES)
def test_training_on_cuda_logs_evaluates_and_saves(tmp_path, sim, mode, monkeypatch):
    """torchrun train.py's path on one GPU: steps, the flush at every log interval (losses and gradient norms read
    from the device in one go), evaluations, best.pt and ckpt.pt, for each loss and precision."""
    calls = []
    real_varlen = torch.nn.attention.varlen.varlen_attn  # the simulator's, bound to the installed signature
    spy = functools.wraps(real_varlen)(lambda *a, **k: calls.append(1) or real_varlen(*a, **k))  # its signature
    monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", spy)
    summary = T.train(tiny_run(tmp_path, device="cuda", max_steps=4, log_interval=2, eval_interval=2, **MODES[mode]))
    out = tmp_path / "out"
    steps = steps_of(out)
    assert [r["step"] for r in steps] == [1, 2, 3, 4] and all(r["loss"] > 0 and r["grad_norm"] > 0 for r in steps)
    assert summary["steps"] == 4 and [h["step"] for h in summary["history"]] == [0, 2, 4]
    assert os.path.isfile(out / "best.pt") and load_checkpoint(str(out / "ckpt.pt"))["step"] == 4
    assert bool(calls) == (mode == "pack")  # packed rows took the varlen kernel on "cuda" (bf16, an H100)
    if mode == "kl":  # the reference is the model at step 0, in the same precision: KL exactly 0 there
        assert steps[0]["kl"] == 0.0 and steps[-1]["kl"] > 0
    if mode == "fp16 + GradScaler":
        assert load_checkpoint(str(out / "ckpt.pt"))["scaler"]["scale"] > 0


@pytest.mark.parametrize("kw", [dict(pack=True), dict(dtype="float16", kl_coef=0.1, loss_reduction="sequence")])
def test_a_cuda_training_step_never_waits_and_flush_reads_once(tmp_path, sim, kw):
    """No host sync from the batches' copy to the optimizer step (the varlen path; the gradient scaler, the KL
    reference), then flush reads every pending step's numbers with one tolist."""
    s = T.setup(resolve(tiny_run(tmp_path, device="cuda", **kw), "cuda"), distributed.Dist(device="cuda:0"))
    plan = plan_epoch(s.cfg, s.train, 0)
    assert all(isinstance(p, CudaTensor) for p in s.model.parameters())
    sim.reset()
    for ids in plan[:3]:
        T.train_step(s, ids, T.prepare(s, ids))
    assert sim.syncs == [] and sim.copies == []  # nor a host-to-device copy that waits (blocking, or unpinned)
    recs = T.flush(s)
    assert sim.syncs == ["tolist"] and [r["step"] for r in recs] == [1, 2, 3]


def test_resume_from_a_cuda_checkpoint_is_exact(tmp_path, sim):
    """Stop at step 2 on "cuda", resume to 4: the same weights as 4 steps straight (optimizer state, scaler and
    the CUDA RNG come back onto the device)."""
    whole = tmp_path / "whole"
    T.train(tiny_run(whole, device="cuda", max_steps=4, dtype="float16"))
    T.train(tiny_run(tmp_path / "cut", device="cuda", max_steps=4, stop_step=2, dtype="float16"))
    T.train(tiny_run(tmp_path / "cut", device="cuda", init_from="resume", max_steps=4, dtype="float16"))
    a, b = load_checkpoint(str(whole / "out" / "ckpt.pt")), load_checkpoint(str(tmp_path / "cut" / "out" / "ckpt.pt"))
    assert b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_the_simulated_gpus_each_have_their_own_random_state(sim):
    """Dropout on "cuda" draws from the current GPU's generator, not the CPU's; torch.manual_seed seeds it; its
    state saved and set back replays the same masks; each GPU has its own."""
    x = torch.ones(1000, device="cuda")
    torch.manual_seed(0)
    host = torch.get_rng_state()
    state = torch.cuda.get_rng_state()
    first = torch.nn.functional.dropout(x, 0.5)
    assert torch.equal(torch.get_rng_state(), host)  # the CPU's generator did not move
    assert not torch.equal(torch.cuda.get_rng_state(), state)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.nn.functional.dropout(x, 0.5), first)
    torch.manual_seed(0)
    assert torch.equal(torch.nn.functional.dropout(x, 0.5), first)


def test_resume_with_noise_on_gpu_1_draws_the_same_noise(tmp_path, monkeypatch):
    """One process on --device cuda:1 (of 2) with NEFTune noise (drawn on the GPU; the simulator cannot run
    attention dropout, whose CPU decomposition makes host tensors): stopped at step 2 and resumed, the weights at
    step 4 are those of 4 steps straight, only because the checkpoint saved this GPU's random state and set it back
    (a checkpoint without it, or with GPU 0's, replays other noise)."""
    with CudaSim(monkeypatch, devices=2):
        kw = dict(device="cuda:1", neftune_alpha=5.0, max_steps=4)
        T.train(tiny_run(tmp_path / "whole", **kw))
        T.train(tiny_run(tmp_path / "cut", stop_step=2, **kw))
        T.train(tiny_run(tmp_path / "cut", init_from="resume", **kw))
    a, b = (load_checkpoint(str(tmp_path / run / "out" / "ckpt.pt")) for run in ("whole", "cut"))
    assert b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_resume_on_a_machine_with_fewer_gpus(tmp_path, monkeypatch):
    """A checkpoint of a process that saw 2 GPUs resumes where 1 is visible: each process keeps only its own GPU's
    random state (all visible GPUs' states made set_rng_state_all fail: "key 'rng' is not a saved random state")."""
    with CudaSim(monkeypatch, devices=2):
        T.train(tiny_run(tmp_path, device="cuda", max_steps=4, stop_step=2))
    with CudaSim(monkeypatch, devices=1):
        T.train(tiny_run(tmp_path, device="cuda", init_from="resume", max_steps=4))
    assert load_checkpoint(str(tmp_path / "out" / "ckpt.pt"))["step"] == 4


def test_a_single_process_on_cuda_n_sets_its_device(tmp_path, monkeypatch):
    """--device cuda:1 without torchrun: torch.cuda.set_device(1), so the capability check and the CUDA random
    state a checkpoint saves are GPU 1's, not GPU 0's."""
    with CudaSim(monkeypatch, devices=2):
        d = distributed.init_distributed("cuda:1")
        assert d.device == "cuda:1" and torch.cuda.current_device() == 1


def test_checkpoint_sizes_are_what_readme_states(tmp_path, sim):
    """ckpt.pt: 12 bytes a parameter (weights and Adam's two moments, float32), best.pt: 4 (README's bytes per
    run for the paper recipe's evaluations, every 200 steps, come from these)."""
    T.train(tiny_run(tmp_path, device="cuda", max_steps=1, eval_interval=1))
    n = sum(p.numel() for p in GPT(GPTConfig(**load_checkpoint(str(tmp_path / "out" / "best.pt"))["model_config"]))
            .parameters())
    ckpt, best = (os.path.getsize(tmp_path / "out" / f) for f in ("ckpt.pt", "best.pt"))
    assert 4 * n < best < 4 * n + 64_000 and 12 * n < ckpt < 12 * n + 96_000
    assert resolve(T.TrainConfig(init_from="gpt2")).eval_interval == 200


def varlen_attn_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, is_causal=False, return_aux=None):
    """torch 2.10's signature: causal by a flag, no window_size."""
    raise AssertionError("varlen_problem should have refused this signature")


@pytest.mark.parametrize("problem", ["turing", "old torch", "float32", "torch 2.10"])
def test_pack_without_the_varlen_kernel_trains_padded_with_one_line(tmp_path, monkeypatch, capsys, problem):
    """A T4 (compute capability 7.5), a torch without torch.nn.attention.varlen, or float32: --pack says why in
    one line and trains on padded rows (the same updates), never an ImportError or a kernel failure."""
    with CudaSim(monkeypatch, capability=(7, 5) if problem == "turing" else (9, 0), name="Tesla T4"):
        if problem == "old torch":
            monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", None)  # import fails, as before 2.10
        if problem == "torch 2.10":  # a varlen_attn of another signature: read, not guessed from the version
            monkeypatch.setattr(torch.nn.attention.varlen, "varlen_attn", varlen_attn_2_10)
        dtype = "float32" if problem == "float32" else "float16"
        T.train(tiny_run(tmp_path, device="cuda", pack=True, max_steps=2, dtype=dtype))
    out = capsys.readouterr().out
    line = [x for x in out.splitlines() if x.startswith("--pack:")]
    assert len(line) == 1 and line[0].endswith("training on padded rows instead (the same updates, slower)")
    assert {"turing": "compute capability 7.5", "old torch": "torch.nn.attention.varlen",
            "float32": "bf16 or fp16", "torch 2.10": "varlen_attn takes no window_size"}[problem] in line[0]
    assert len(steps_of(tmp_path / "out")) == 2


# ----------------------------------------------------------------------------- generation, eval, sample, export

def test_generation_waits_for_the_device_once_per_token(sim):
    """Three reads per token (two tolist and done.all()) became one, left-padded prompts included."""
    torch.manual_seed(0)
    net = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=64, vocab_size=67)).to("cuda").eval()
    for prompts in ([[1, 2, 3], [4, 5, 6]], [[1, 2, 3, 4, 5], [6]]):
        sim.reset()
        out = net.generate(prompts, max_new_tokens=6)
        assert sim.syncs == ["tolist"] * 6 and all(len(o) == 6 for o in out)
    greedy = net.generate([[1, 2, 3]], 6)[0]
    i = greedy.index(greedy[-1])  # the first time the last token comes
    sim.reset()  # with it as end-of-text: one read per token, the last one the end's
    assert net.generate([[1, 2, 3]], 6, eos_id=greedy[-1])[0] == greedy[:i] and sim.syncs == ["tolist"] * (i + 1)
    assert i >= 2


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    """A train.py run on "cuda" of the built-in task (its checkpoints carry the location cuda:0)."""
    path = tmp_path_factory.mktemp("cuda_run")
    with pytest.MonkeyPatch.context() as monkeypatch, CudaSim(monkeypatch):
        T.train(T.TrainConfig(out_dir=str(path), device="cuda", n_layer=1, n_head=2, n_embd=32, synth_examples=30,
                              synth_heldout=6, synth_facts=2, synth_mentions=2, max_steps=2, batch_size=4,
                              eval_interval=2, train_eval_size=4))
    return str(path)


def test_checkpoints_written_on_cuda_load_on_a_cpu_only_machine(cuda_run, tmp_path, monkeypatch):
    """The storages say cuda:0, as a GPU's checkpoint does; every loader maps them to the CPU, so export,
    eval and sample work on a laptop. Without map_location the simulated CPU-only machine refuses, as torch does."""
    with CudaSim(monkeypatch, gpu_machine=False):
        with pytest.raises(RuntimeError, match="CPU-only machine"):
            torch.load(os.path.join(cuda_run, "ckpt.pt"), weights_only=True)
    out = export.export(make_config(export.ExportConfig, dict(ckpt=cuda_run, out_dir=str(tmp_path / "hf"))))
    model, _ = load_model(out)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_eval_generate_and_benchmarks_on_cuda(cuda_run, tmp_path, sim):
    hs = tmp_path / "hs.jsonl"
    hs.write_text(json.dumps({"ctx": "The cat", "endings": ["sat.", "flew.", "ran.", "slept."], "label": "0"}) + "\n")
    mmlu = tmp_path / "mmlu.csv"
    mmlu.write_text("What is 2+2?,3,4,5,6,B\nNext?,a,b,c,d,D\n")
    for dtype in ("float32", "bfloat16"):
        r = ev.evaluate(make_config(ev.EvalConfig, dict(ckpt=cuda_run, generate=True, memorization=True, limit=4,
                                                        max_new_tokens=4, hellaswag=str(hs), mmlu=str(mmlu),
                                                        device="cuda", dtype=dtype, temperature=0.7,
                                                        out=str(tmp_path / dtype / "eval.json"))))
        m = r["metrics"]
        assert {"heldout", "train", "generate", "memorization", "hellaswag", "mmlu"} <= m.keys()
        assert m["mmlu"]["acc"] in (0.0, 0.5, 1.0) and m["heldout"]["output_loss"] > 0


def test_eval_on_cuda_takes_bf16_and_tf32_by_default(cuda_run, tmp_path, sim, monkeypatch):
    """--dtype auto: bf16 autocast on an H100 (fp16 on a T4, which only emulates bf16), TF32 for
    float32 matmuls on CUDA, as train.py; float32 on the CPU."""
    tf32 = []
    monkeypatch.setattr(ev, "use_tf32", lambda: tf32.append(1))
    cfg = make_config(ev.EvalConfig, dict(ckpt=cuda_run, limit=2, device="cuda", out=str(tmp_path / "e.json")))
    r = ev.evaluate(cfg)
    assert r["config"]["dtype"] == "bfloat16" and tf32
    assert ev.amp_dtype(cfg, "cpu") is None and ev.amp_dtype(dataclasses.replace(cfg, dtype="float32"), "cuda") is None
    sim.capability = (7, 5)
    assert ev.amp_dtype(cfg, "cuda:0") == torch.float16


def test_sample_on_cuda_greedy_and_sampled(cuda_run, sim, capsys, monkeypatch):
    for extra in ([], ["--temperature", "0.8", "--top_k", "5", "--top_p", "0.9"]):
        monkeypatch.setattr(sys, "argv", ["sample.py", "--ckpt", cuda_run, "--device", "cuda", "--prompt", "K2=",
                                          "--max_new_tokens", "5", *extra])
        sim.reset()
        sample.main()
        assert sim.syncs.count("item") <= 5  # one read per new token
    assert capsys.readouterr().out.strip()


def test_compare_trains_and_evaluates_on_cuda(tmp_path, sim):
    from scripts.experiments import compare
    runs = compare.main(["--out_dir", str(tmp_path / "cmp"), "--modes", "it,im+kl", "--seeds", "1", "--jobs", "1",
                         "--n_layer", "1", "--n_head", "2", "--n_embd", "32", "--synth_examples", "20",
                         "--synth_facts", "2", "--synth_heldout", "4", "--synth_mentions", "2", "--max_steps", "2",
                         "--batch_size", "4", "--eval_interval", "2", "--train_eval_size", "4", "--device", "cuda",
                         "--gen_examples", "2", "--max_new_tokens", "4"])
    assert [r["steps"] for r in runs] == [2, 2]


# ----------------------------------------------------------------------------- the GPU benchmark

def test_gpu_benchmark_on_cuda_marks_the_device_batches_dynamic(tmp_path, sim, monkeypatch):
    """bench_gpu.py on "cuda": mark_dynamic lands on the tensors the engine gets (it was set on the CPU copies,
    which .to(cuda) drops: 5 graphs instead of 2), and the peak memory is measured per variant."""
    from scripts.bench import bench_gpu

    import loss as L
    marked, seen, resets = [], [], []
    real_mark = L.mark_dynamic
    monkeypatch.setattr(L, "mark_dynamic", lambda b: marked.append(b.idx) or real_mark(b))
    real_run = L.run_micro_batches
    monkeypatch.setattr(L, "run_micro_batches", lambda engine, batches, *a: seen.append(
        (engine, [b.idx for b in batches])) or real_run(engine, batches, *a))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: resets.append(1))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 3 * 2**30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2**30)
    # the compiled engines run uncompiled here: dynamo does not trace the simulator's tensors
    monkeypatch.setattr(torch, "compile", lambda module, backend=None, **kw: CompiledStandIn(module, backend))
    result = bench_gpu.main(["--device", "cuda", "--smoke", "--threads", "1", "--no-reference", "--mixes", "alpaca",
                             "--out", str(tmp_path / "b.json")])
    compiled = [idx for engine, batch in seen if isinstance(engine, CompiledStandIn) for idx in batch]
    assert compiled and all(isinstance(t, CudaTensor) and any(t is m for m in marked) for t in compiled)
    assert len(resets) == len(result["rows"]) == 5 and all(r["peak_gib"] == 2.0 for r in result["rows"])


class CompiledStandIn(torch.nn.Module):
    """torch.compile's module, run eager: it tells the benchmark's compile counter it made one graph (else the
    benchmark, rightly, fails the variant as fallen back to eager)."""

    def __init__(self, module, counter=None):
        super().__init__()
        self.inner, self.counter = module, counter

    def forward(self, *a, **kw):
        if self.counter is not None:
            self.counter.frame_count = max(self.counter.frame_count, 1)
        return self.inner(*a, **kw)


# ----------------------------------------------------------------------------- two ranks

class SimDDP(torch.nn.Module):
    """DDP's contract as train.py relies on it (on the simulator's tensors, which torch's C++ DDP cannot read):
    gradients averaged over the ranks in the backward of a micro-step outside no_sync(), through dist.all_reduce
    (which refuses CPU tensors under the simulated NCCL)."""

    def __init__(self, module, device_ids=None):
        super().__init__()
        assert device_ids == [torch.cuda.current_device()], device_ids  # one GPU per process, as train.py asks
        self.module, self.sync = module, True
        for p in module.parameters():
            p.register_post_accumulate_grad_hook(self._average)

    def _average(self, p) -> None:
        if self.sync:
            torch.distributed.all_reduce(p.grad)
            p.grad.div_(torch.distributed.get_world_size())

    def no_sync(self):
        ddp = self

        class NoSync:
            def __enter__(self):
                ddp.sync = False

            def __exit__(self, *exc):
                ddp.sync = True
        return NoSync()

    def forward(self, *a, **kw):
        return self.module(*a, **kw)


def ddp_worker(rank: int, ports: tuple[int, int], root: str, stop_rank_at: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(ports[0]), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as monkeypatch, CudaSim(monkeypatch, devices=2) as sim:
        monkeypatch.setattr(T, "DDP", SimDDP)
        cfg = T.TrainConfig(out_dir=os.path.join(root, "ddp"), device="cuda", n_layer=1, n_head=2, n_embd=32,
                            synth_examples=30, synth_heldout=6, synth_facts=2, synth_mentions=2, max_steps=4,
                            batch_size=4, micro_batch_size=1, eval_interval=2, train_eval_size=4, log_interval=2)
        T.train(cfg)  # both ranks: the flush, evaluation and checkpoint collectives on "cuda" under "NCCL"
        assert cuda_sim.SIM.backend == "nccl" and sim.syncs  # train.py asked for NCCL; the sim held it to its rules
        setup, sessions = T.setup, []
        os.environ["MASTER_PORT"] = str(ports[1])  # a fresh store: the first one's port may linger

        def signal_on_one_rank(cfg, d, typed=None):
            s = setup(cfg, d, typed)
            sessions.append(s)
            if d.rank == 1:  # rank 1 alone is told to stop after its step `stop_rank_at`
                s.optimizer.register_step_post_hook(
                    lambda *a: setattr(signals[0], "requested", s.prog.step >= stop_rank_at - 1))
            return s
        signals = []
        real_stop = distributed.StopAtStepBoundary.__enter__
        monkeypatch.setattr(distributed.StopAtStepBoundary, "__enter__", lambda self: signals.append(self) or real_stop(self))
        monkeypatch.setattr(T, "setup", signal_on_one_rank)
        try:
            T.train(dataclasses.replace(cfg, out_dir=os.path.join(root, "stop")))
        except KeyboardInterrupt:
            with open(os.path.join(root, f"stopped-{rank}"), "w") as f:
                f.write(str(sessions[0].prog.step))
        finally:
            distributed.destroy_distributed()
    leave_spawned_worker()


def test_two_ranks_on_cuda_reduce_on_the_device_and_stop_at_the_same_step(tmp_path, monkeypatch):
    """torchrun --nproc_per_node 2 on "cuda" (gloo underneath, NCCL's rule that collectives take GPU tensors):
    the losses all-reduced at each flush equal one process's; a signal on one rank stops both at the same step,
    the first log interval after it (the check is at log intervals, not every step)."""
    from conftest import free_port
    ports = (free_port(), free_port())
    mp.start_processes(ddp_worker, args=(ports, str(tmp_path), 1), nprocs=2, start_method="spawn")
    with CudaSim(monkeypatch):
        T.train(T.TrainConfig(out_dir=str(tmp_path / "one"), device="cuda", n_layer=1, n_head=2, n_embd=32,
                              synth_examples=30, synth_heldout=6, synth_facts=2, synth_mentions=2, max_steps=4,
                              batch_size=4, micro_batch_size=2, eval_interval=2, train_eval_size=4))
    two, one = steps_of(tmp_path / "ddp"), steps_of(tmp_path / "one")
    assert [r["step"] for r in two] == list(range(1, 5))
    for key in ("loss", "grad_norm"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=2e-2), key
    stopped = [open(tmp_path / f"stopped-{r}").read() for r in (0, 1)]
    assert stopped == ["2", "2"]  # asked during step 1: both finish step 2, the next log interval, and stop


# ----------------------------------------------------------------------------- the review's other items

def test_loss_totals_are_counted_once_per_dataset(tmp_path, monkeypatch):
    """A step adds up its examples' precounted rows (a Python loop over every example's weights, on every rank
    and every step, cost more than collating); the sums are those of counting the step's weights directly."""
    import loss as L
    calls = []
    real = L.example_totals
    monkeypatch.setattr(T, "example_totals", lambda ex, *a: calls.append(len(ex)) or real(ex, *a))
    T.train(tiny_run(tmp_path, max_steps=3, loss="im"))
    assert calls == [20]  # once, over the 20 training examples
    s = T.setup(resolve(tiny_run(tmp_path / "again", prompt_loss_weight=0.3)), distributed.Dist())
    for ids in plan_epoch(s.cfg, s.train, 0):
        w = [np.asarray(loss_weights(s.train[i].segs, 0.3)[1:], dtype=np.float64) for i in ids]
        out = sum(seg in (ASSISTANT, EOT) for i in ids for seg in s.train[i].segs[1:])
        got = L.step_totals(s.totals, ids)
        assert got == pytest.approx(
            {"weight_sum": sum(float(x.sum()) for x in w), "output_tokens": out, "examples": len(ids),
             "positions": sum(len(x) for x in w), "weighted_positions": sum(int((x != 0).sum()) for x in w)},
            rel=1e-12)


def test_eval_loads_once_per_node_under_torchrun(cuda_run, monkeypatch, tmp_path):
    """eval.py under torchrun: local rank 0 reads (downloads) the model and data first, the others after it."""
    inside, entered = [], []
    real_load = ev.load_model

    class Ordered:
        def __init__(self, d):
            entered.append(d.local_rank)

        def __enter__(self):
            inside.append(True)

        def __exit__(self, *exc):
            inside.pop()

    monkeypatch.setattr(ev, "local_rank_zero_first", Ordered)
    monkeypatch.setattr(ev, "load_model", lambda *a, **k: (bool(inside) or pytest.fail("outside")) and
                        real_load(*a, **k))
    ev.evaluate(make_config(ev.EvalConfig, dict(ckpt=cuda_run, limit=2, device="cpu", out=str(tmp_path / "e.json"))),
                distributed.Dist(rank=3, local_rank=1, world_size=1))
    assert entered == [1]


def test_bench_train_switches_the_step_totals_with_the_loss():
    """bench_train.py alternates IT and IM in one session: the precounted totals follow the prompt weight."""
    from scripts.bench import bench_train
    import loss as L
    cfg = make_config(bench_train.BenchConfig, dict(sizes=["tiny"], device="cpu"))
    s = bench_train.session(cfg, "tiny")
    sums = {}
    for loss, weight in (("im", 1.0), ("it", 0.0), ("im", 1.0)):
        bench_train.use(s, loss, True)
        assert all(e.weights == loss_weights(e.segs, weight) for e in s.train)
        assert (s.totals == L.example_totals(s.train)).all()
        sums[loss] = s.totals[:, 0].sum()
    assert sums["im"] > sums["it"]  # IM weighs the instructions too
