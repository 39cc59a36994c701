"""Fine-tune GPT-2 (or train a small GPT from scratch) on instruction data, with the loss on the outputs only
(IT) or on the instructions too (IM). One plain PyTorch loop for a laptop CPU and for torchrun on many GPUs.

    python train.py                                          # tiny GPT, built-in synthetic task, CPU, ~2 min
    python train.py --init_from gpt2 --data alpaca.json --loss im         # one GPU, the paper's recipe
    torchrun --standalone --nproc_per_node=8 train.py --init_from gpt2 --data alpaca.json --loss im
    torchrun --nnodes=2 --node_rank=R --master_addr=HOST --master_port=29500 --nproc_per_node=8 train.py ...
    python train.py --init_from resume --out_dir out         # continue out/ckpt.pt exactly where it stopped

The loss of an optimizer step is sum(weight * token loss) / sum(weight) over the WHOLE step: every micro-batch
on every rank. So the update does not depend on the micro-batch size, the accumulation or the process count.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import os
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import Batch, Example, answer_start, build_data, collate
from imgpt import batching, checkpoint, cli, device, distributed, files, formats, memory, rundir, tokenizers
from imgpt.train_config import TrainConfig, resolve
from loss import StepLoss, example_totals, mark_dynamic, run_micro_batches, step_batches, step_divisor, step_totals
from metrics import eval_record
from model import GPT, GPTConfig, load_model, model_from_payload

# ----------------------------------------------------------------------------- the run

class TrainingDiverged(cli.RunStopped):
    """The loss became NaN or infinite: the run stops (one line, exit 2); the last good checkpoint stays in place."""


@dataclass
class Session:
    """Everything one run holds, passed to the small functions below."""
    cfg: TrainConfig
    dist: distributed.Dist
    model: GPT  # unwrapped and uncompiled: what checkpoints and evaluation use
    step_loss: nn.Module  # loss.StepLoss (the model and its loss in one forward), maybe compiled, maybe in DDP
    ref: GPT | None  # frozen initial model for --kl_coef
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    tok: object  # tiktoken.Encoding
    tok_record: str | dict  # the tokenizer as checkpoints carry it (checkpoint.tokenizer_record): they travel
    train: list[Example]
    val: list[Example]
    train_sample: list[Example]
    accum: int
    total: int
    prog: rundir.Progress
    peak: float | None = None  # the GPU's peak FLOP/s at the training precision, for MFU (None: not logged)
    pending: list = dataclasses.field(default_factory=list)  # step records whose device numbers are unread
    clock: float = 0.0  # when the pending steps began
    speeds: list = dataclasses.field(default_factory=list)  # tokens/s of every step read so far
    totals: np.ndarray | None = None  # loss.example_totals of the training set, (examples, 4): a step adds its rows

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.out_dir, name)

    def log(self, record: dict) -> None:
        if self.dist.is_main:
            with open(self.path("log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")


def prepare(session: Session, ids: list[int]) -> list[Batch | None]:
    """This rank's micro-batches of the step `ids`, collated on the CPU (in pinned memory for CUDA). A pure
    function of the ids, so a background thread can build the next step's while the GPU runs this one."""
    cfg, dist = session.cfg, session.dist
    accum = math.ceil(len(ids) / (cfg.micro_batch_size * dist.world_size))  # fewer for a short (or token-capped) step
    return step_batches(session.train, batching.micro_batches(ids, dist.rank, dist.world_size, accum), cfg.pack,
                        cfg.loss_reduction, pin=dist.device.startswith("cuda"))


def lr_at(step: int, total: int, lr: float, min_lr: float, warmup: int, schedule: str) -> float:
    """Learning rate of optimizer step `step` (0-based) of `total`: linear warmup, then the decay."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)  # never 0: a first step at lr 0 would be wasted
    if schedule == "constant":
        return lr
    progress = (step - warmup) / max(1, total - warmup)  # 0 -> 1 over the decay
    coeff = 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr + coeff * (lr - min_lr)


def train_step(session: Session, ids: list[int], batches: list[Batch | None]) -> dict:
    """One optimizer step on the examples `ids` (the whole step, all ranks), given this rank's micro-batches.

    Nothing here waits for the GPU: the step's weight sum is counted from `ids`, the batches carry the indices
    of their weighted positions, and the loss and gradient norm stay on the device until `flush` reads them."""
    cfg, dist = session.cfg, session.dist
    warmup = math.ceil(cfg.warmup_ratio * session.total)
    lr = lr_at(session.prog.step, session.total, cfg.lr, cfg.min_lr, warmup, cfg.schedule)
    for group in session.optimizer.param_groups:
        group["lr"] = lr
    divisor = step_divisor(session.totals, ids, cfg.loss_reduction)  # N of the whole step, every rank
    batches = [None if b is None else b.to(dist.device) for b in batches]
    dummy = None
    if dist.enabled and batches[-1] is None:  # a short last step left this rank without its final micro-batch
        dummy = collate([session.train[ids[0]]]).to(dist.device)
    for b in batches + [dummy]:
        if cfg.compile and b is not None:
            mark_dynamic(b)
    step_loss = run_micro_batches(session.step_loss, batches, dummy, divisor, dist.world_size, session.ref,
                                  cfg.kl_coef, session.amp_dtype, session.scaler)  # (2,) [CE, KL] / N, this rank
    session.scaler.unscale_(session.optimizer)  # clip the true gradient, not the fp16-scaled one
    grad_norm = torch.nn.utils.clip_grad_norm_(session.model.parameters(), cfg.grad_clip or math.inf)
    session.scaler.step(session.optimizer)
    session.scaler.update()
    session.optimizer.zero_grad(set_to_none=True)
    session.prog.step, session.prog.index = session.prog.step + 1, session.prog.index + 1
    c, step = session.model.config, step_totals(session.totals, ids)
    lengths = [len(session.train[i].ids) - 1 for i in ids]
    flops = device.training_flops(c.n_layer, c.n_embd, c.vocab_size, lengths,
                                  step["weighted_positions"] if cfg.skip_zero else step["positions"],
                                  reference=session.ref is not None)
    rec = {"step": session.prog.step, "step_loss": step_loss.to(grad_norm.device), "lr": lr, "grad_norm": grad_norm,
           "weight_sum": step["weight_sum"], "tokens": step["positions"], "flops": flops}
    session.pending.append(rec)
    return rec


def flush(session: Session, collective: bool = True) -> list[dict]:
    """Read the pending steps' losses and gradient norms from the device (one wait for the GPU, one
    all-reduce), stop if any diverged, and log them; returns their records. Called at log intervals and before
    every checkpoint, so a checkpoint never holds a diverged model."""
    if not session.pending:
        return []
    recs, session.pending = session.pending, []
    losses = torch.stack([r["step_loss"] for r in recs])  # (k, 2): this rank's [CE, KL] / N per step, on the device
    if collective:
        losses = distributed.sum_over_ranks(losses, session.dist)  # each rank holds its share of the step's loss
    norms = torch.stack([r["grad_norm"] for r in recs]).to(losses.device).double().unsqueeze(1)  # (k, 1)
    values = torch.cat([losses, norms], 1).tolist()  # (k, 3): the one read of the device
    dt = (time.perf_counter() - session.clock) / len(recs)  # the GPU ran asynchronously: only the average is known
    session.clock = time.perf_counter()
    for rec, (ce, kl, grad_norm) in zip(recs, values):
        if not math.isfinite(ce + kl) or (not session.scaler.is_enabled() and not math.isfinite(grad_norm)):
            raise TrainingDiverged(f"loss {ce + kl} / gradient norm {grad_norm} at step {rec['step']}: stopped; "
                                   f"the last good checkpoint (if any) is in {session.cfg.out_dir}. Try a lower "
                                   f"--lr or float32")
        del rec["step_loss"]
        rec.update(loss=ce, grad_norm=grad_norm, tokens_per_s=rec["tokens"] / dt, step_time=dt)
        session.speeds.append(rec["tokens_per_s"])
        if session.cfg.kl_coef:
            rec["kl"] = kl
        if session.peak is not None:
            rec["mfu"] = rec["flops"] / dt / (session.peak * session.dist.world_size)
        if collective or not session.dist.enabled:
            session.log(rec)
    return recs


def save(session: Session, name: str, weights_only: bool = False) -> None:
    """Write out_dir/name atomically: everything needed to continue exactly; or, with weights_only (best.pt),
    what evaluation needs: without the optimizer's two moments it is a third of the size. A model that is not
    finite (nor its optimizer moments, in ckpt.pt) is never written: it would replace the last good checkpoint."""
    moments = [] if weights_only else [v for state in session.optimizer.state.values() for v in state.values()
                                       if torch.is_tensor(v) and v.is_floating_point()]
    finite = [torch.isfinite(t).all() for t in [*session.model.parameters(), *moments]]
    if not torch.stack(finite).all():  # one host sync
        raise TrainingDiverged(f"the weights (or their optimizer moments) hold NaN or inf at step "
                               f"{session.prog.step}: {name} not written; the last good checkpoint (if any) is in "
                               f"{session.cfg.out_dir}. Try a lower --lr or float32")
    rngs = [] if weights_only else checkpoint.all_rng_states(session.dist)  # a collective: every rank calls it
    # the other ranks wait for rank 0's write at a stated timeout (distributed.CHECKPOINT_TIMEOUT), not in NCCL
    with distributed.others_wait_for_rank_zero(session.dist):
        if not (session.dist.is_main and session.cfg.save):
            return
        payload = {"model": session.model.state_dict(), "model_config": asdict(session.model.config),
                   "tokenizer": session.tok_record, "config": asdict(session.cfg), "step": session.prog.step,
                   "best_val_loss": session.prog.best_val_loss, "history": session.prog.history}
        if not weights_only:
            payload.update({"optimizer": session.optimizer.state_dict(), "scaler": session.scaler.state_dict(),
                            "data_state": {"epoch": session.prog.epoch, "index": session.prog.index}, "rng": rngs})
        checkpoint.save_checkpoint(session.path(name), payload)


def eval_and_save(session: Session) -> dict:
    """Score the model, log it, keep best.pt by held-out output loss, and save ckpt.pt."""
    flush(session)  # a diverged step stops the run here, before it could reach a checkpoint
    bs = max(1, session.cfg.micro_batch_size or session.cfg.batch_size // session.dist.world_size)
    eos = session.tok.eot_token if session.cfg.data in formats.SYNTHETIC else None  # one-word answers
    r = {"step": session.prog.step, **eval_record(session.model, session.val, session.train_sample, bs,
                                                  session.dist.device, session.dist, session.amp_dtype, eos)}
    if not session.val:
        r["val_output_loss"] = r["val_prompt_loss"] = None
    session.log({"eval": r})
    if session.dist.is_main:
        tqdm.write(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if bad := [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]:
        raise TrainingDiverged(f"evaluation at step {session.prog.step} gave {', '.join(bad)} = NaN or inf: stopped "
                               f"without saving; the last good checkpoint (if any) is in {session.cfg.out_dir}")
    session.prog.history.append(r)
    if r["val_output_loss"] is not None and r["val_output_loss"] < session.prog.best_val_loss:
        session.prog.best_val_loss = r["val_output_loss"]
        save(session, "best.pt", weights_only=True)
    if session.prog.step > 0:  # step 0's ckpt.pt would hold the start a new run rebuilds: nothing to resume from
        save(session, "ckpt.pt")
    session.clock = time.perf_counter()  # the next steps' speed leaves out this evaluation
    return r


def scratch_config(cfg: TrainConfig, vocab_size: int) -> GPTConfig:
    """The preset with the size flags that are set (GPTConfig itself refuses n_embd % n_head != 0)."""
    sizes = {k: getattr(cfg, k) for k in ("n_layer", "n_head", "n_embd", "block_size") if getattr(cfg, k)}
    return GPTConfig.preset(cfg.model, vocab_size=vocab_size, dropout=cfg.dropout, **sizes)


def build_model(cfg: TrainConfig) -> tuple[GPT, object]:
    """The initial model and its tokenizer; the same on every rank."""
    if cfg.init_from == "scratch":
        tok = tokenizers.get_tokenizer(cfg.tokenizer or "byte")
        torch.manual_seed(cfg.seed)
        return GPT(scratch_config(cfg, tok.n_vocab)), tok
    model, tok = load_model(cfg.init_from)
    if cfg.tokenizer:
        tok = tokenizers.get_tokenizer(cfg.tokenizer)
    model.config.dropout = cfg.dropout  # a pretrained config carries its own dropout; the flag decides (read live)
    return model, tok


def setup(cfg: TrainConfig, dist: distributed.Dist, typed: set[str] | None = None) -> Session:
    """Build the model, data, optimizer and progress, from scratch, a pretrained model or a checkpoint. `typed`:
    the settings the user gave (rundir.resume_config), which a resumed run takes or refuses."""
    ckpt, ckpt_path = None, os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.init_from == "resume":
        ckpt = checkpoint.load_checkpoint(ckpt_path)
        checkpoint.check_training_checkpoint(ckpt, ckpt_path)
    if dist.is_main:
        rundir.prepare_out_dir(cfg)  # before the checkpoint's config replaces init_from=resume
    if ckpt is not None:
        cfg = rundir.resume_config(ckpt["config"], cfg, ckpt_path, typed)
    device_type = torch.device(dist.device).type
    auto_micro = cfg.micro_batch_size is None and device_type == "cuda"  # sized below by the memory it needs
    cfg = resolve(cfg, device_type, dist.world_size)
    micro, accum = batching.split_sizes(cfg.batch_size, cfg.micro_batch_size, dist.world_size)  # fail before any work
    cfg = dataclasses.replace(cfg, micro_batch_size=micro)
    amp_dtype = device.amp_dtype_for(cfg.dtype, device_type)
    peak = device.set_up_device(dist.device, cfg.threads, amp_dtype, dist.is_main)
    if cfg.pack and device_type == "cuda" and (why := device.varlen_problem(amp_dtype is not None, cfg.dropout)):
        cfg = dataclasses.replace(cfg, pack=False)  # packing changes only the speed, never the update
        if dist.is_main:
            print(f"--pack: {why}; training on padded rows instead (the same updates, slower)")
    with distributed.local_rank_zero_first(dist):  # one download per node; the other ranks then read the cache
        if ckpt is None:
            model, tok = build_model(cfg)
            ref = copy.deepcopy(model) if cfg.kl_coef else None
        else:
            model = model_from_payload(ckpt, ckpt_path)
            tok = rundir.resume_tokenizer(ckpt, ckpt_path, model.config.vocab_size)
            ref = build_model(cfg)[0] if cfg.kl_coef else None
        if cfg.block_size > model.config.block_size:
            raise cli.UserError(f"--block_size {cfg.block_size} exceeds the model's context {model.config.block_size}")
        cfg = dataclasses.replace(cfg, block_size=cfg.block_size or model.config.block_size)
        train_ex, val_ex, stats = build_data(cfg, tok)
    if device_type == "cpu":  # once every input has loaded (a bad one's error stays the only line); the count used
        cfg = dataclasses.replace(cfg, threads=device.cpu_threads(cfg.threads, dist.world_size, dist.is_main))
        torch.set_num_threads(cfg.threads)  # goes into the run's config: a thread count reproduces its digits
    if auto_micro:  # the most rows whose longest micro-batch fits the GPU's free memory, by memory's model
        shape = memory.StepShape(amp_dtype is not None, cfg.dropout > 0, cfg.grad_checkpoint, cfg.head_chunk,
                                 dist.enabled, cfg.kl_coef > 0)
        micro, why = memory.auto_micro_batch(model.config, model.num_params(), micro * accum,
                                             max(len(e.ids) - 1 for e in train_ex), dist.device, shape)
        micro, accum = batching.split_sizes(cfg.batch_size, micro, dist.world_size)
        cfg = dataclasses.replace(cfg, micro_batch_size=micro)
        if dist.is_main:
            print(why)
    model.grad_checkpoint = cfg.grad_checkpoint
    steps_per_epoch = len(batching.plan_epoch(cfg, train_ex, 0))
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    model.to(dist.device).train()
    if ref is not None:  # frozen, in float32 as the model is: at step 0 both run the same computation, KL exactly 0
        ref.to(dist.device).eval().requires_grad_(False)  # (a bf16 copy rounds embeddings and LayerNorms: KL > 0)
    step_loss = StepLoss(model, cfg.skip_zero, cfg.neftune_alpha, cfg.head_chunk)
    if dist.enabled:
        step_loss = DDP(step_loss, device_ids=[dist.local_rank] if device_type == "cuda" else None)
    if cfg.compile:  # after DDP: dynamo then cuts the graph at DDP's buckets, so each all-reduce overlaps backward
        step_loss = torch.compile(step_loss)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2))  # fused on CPU/CUDA
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    prog = rundir.Progress()
    torch.manual_seed(cfg.seed + dist.rank)  # each rank its own dropout masks and NEFTune noise
    random.seed(cfg.seed + dist.rank)
    if ckpt is not None:
        prog = rundir.restore(ckpt, ckpt_path, optimizer, scaler, dist)
        rundir.check_length(cfg, prog.step, total)
    sample = sorted(random.Random(cfg.seed).sample(range(len(train_ex)), min(cfg.train_eval_size, len(train_ex))))
    val_eval = val_ex[:cfg.eval_examples] if cfg.eval_examples else val_ex
    session = Session(cfg, dist, model, step_loss, ref, optimizer, scaler, amp_dtype, tok,
                      tokenizers.tokenizer_record(tok), train_ex, val_eval, [train_ex[i] for i in sample], accum,
                      total, prog, peak, totals=example_totals(train_ex))
    if dist.is_main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if ckpt is None:  # a new run (prepare_out_dir allowed it): nothing of an earlier run stays to mix in
            for name in rundir.RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(session.path(name))
            open(session.path("log.jsonl"), "w").close()
        else:  # the steps logged after the checkpoint run again: each step is logged once
            rundir.keep_log_until(session.path("log.jsonl"), prog.step)
        print("\n".join(startup_lines(cfg, model.config, model.num_params(), len(train_ex), len(val_ex), stats, accum,
                                      dist.world_size, total, dist.device, prog.step if ckpt else None,
                                      steps_per_epoch)))
    return session


def run(session: Session, signals: distributed.StopAtStepBoundary | None = None, argv: list[str] | None = None) -> dict:
    """The loop: steps in the data plan's order, evaluations, checkpoints; returns the summary. When `signals`
    caught Ctrl-C (or SIGTERM), the loop saves ckpt.pt between two steps and raises KeyboardInterrupt. `argv`,
    the command line's flags if any, lets the closing lines spell out the comparison run."""
    cfg, prog, t0 = session.cfg, session.prog, time.perf_counter()
    stop = min(session.total, cfg.stop_step) if cfg.stop_step else session.total
    planned, plan = -1, []
    bar = tqdm(total=session.total, initial=prog.step, disable=not session.dist.is_main,
               desc=f"train (prompt weight {cfg.prompt_loss_weight:g})")
    if prog.step == 0 and cfg.eval_interval:
        eval_and_save(session)  # the starting point of the loss curves
    prefetch = batching.Prefetcher(lambda ids: prepare(session, ids))
    try:
        session.clock = time.perf_counter()
        while prog.step < stop:
            # a signal came during the last step (checked at log intervals under torchrun): stop here
            if signals is not None and distributed.stop_requested(signals, session.dist, prog.step, cfg.log_interval):
                flush(session)
                save(session, "ckpt.pt")
                if session.dist.is_main:
                    tqdm.write(f"interrupted: checkpoint at step {prog.step} in {cfg.out_dir}; "
                               "--init_from resume continues")
                raise KeyboardInterrupt
            if planned != prog.epoch:  # the same plan for any rank count and after a resume
                plan, planned = batching.plan_epoch(cfg, session.train, prog.epoch), prog.epoch
            if prog.index >= len(plan):
                prog.epoch, prog.index = prog.epoch + 1, 0
                continue
            tokens = cfg.micro_batch_size * max(len(session.train[i].ids) - 1 for i in plan[prog.index])  # longest
            with memory.step_failures(prog.step, cfg.micro_batch_size, tokens, session.dist.device):  # OOM: 1 line
                train_step(session, plan[prog.index], prefetch.batches(plan, prog.epoch, prog.index))
            bar.update(1)
            if prog.step % cfg.log_interval == 0 or prog.step == stop:  # the only wait for the GPU
                rec = flush(session)[-1]
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
            if cfg.eval_interval and prog.step % cfg.eval_interval == 0 and prog.step < stop:
                eval_and_save(session)
    finally:
        prefetch.close()
        bar.close()
    last = eval_and_save(session)
    summary = {"steps": prog.step, "total_steps": session.total, "finished": prog.step >= session.total,
               "time_s": time.perf_counter() - t0, "train_examples": len(session.train),
               "val_examples": len(session.val),
               "world_size": session.dist.world_size, "accum": session.accum,
               "plain_text": not any(answer_start(e.segs) for e in session.train),  # no instruction: language modelling
               "tokens_per_s": sum(session.speeds) / max(1, len(session.speeds)),
               "final": last, "best_val_output_loss": prog.best_val_loss if session.val else None,
               "history": prog.history, "config": asdict(cfg)}
    if session.dist.is_main:
        files.write_text_atomic(session.path("summary.json"), json.dumps(summary, indent=1))
        print("\n".join(summary_lines(summary, cfg, argv)))
    return summary


# ----------------------------------------------------------------------------- what the run prints

NOT_MOVED = ("--loss", "--prompt_loss_weight", "--out_dir", "--init_from")  # flags other_loss_command replaces


def loss_name(prompt_loss_weight: float) -> str:
    if prompt_loss_weight == 0:
        return "IT: loss on the outputs only"
    if prompt_loss_weight == 1:
        return "IM: loss on the instructions too"
    return f"loss on the outputs, and on the instructions with weight {prompt_loss_weight:g}"


def startup_lines(cfg: TrainConfig, mc: GPTConfig, n_params: int, n_train: int, n_val: int, stats: dict,
                  accum: int, world: int, total: int, device: str, resumed_at: int | None,
                  steps_per_epoch: int = 0) -> list[str]:
    """A few readable lines: loss, model, data, schedule (its steps also as epochs: passes over the training set,
    when steps_per_epoch is given), files, and the IT note on the prompt loss."""
    epochs = f", {total / steps_per_epoch:.3g} epochs of {n_train}" if steps_per_epoch else ""
    origin = "from scratch" if cfg.init_from == "scratch" else f"from {cfg.init_from}"
    n = max(stats["examples"], 1)
    ratio = stats["prompt_tokens"] / max(stats["output_tokens"], 1)
    plain = stats["prompt_tokens"] == stats.get("template_tokens", 0) == 0 and stats["output_tokens"] > 0
    lines = [
        "plain text: loss on every token (language modelling; --loss does not apply)" if plain else
        f"{loss_name(cfg.prompt_loss_weight)}",
        f"model: {origin}, {mc.n_layer} layers x {mc.n_embd} wide, {n_params:,} parameters, context {cfg.block_size}",
        f"data: {cfg.data}, {n_train} train / {n_val} held-out examples, {stats['prompt_tokens'] / n:.0f} instruction"
        f" and {stats['output_tokens'] / n:.0f} output tokens each (ratio {ratio:.1f}), {stats['truncated']} "
        f"truncated, {stats['dropped']} dropped",
        f"steps: {total} of {cfg.batch_size} examples{epochs} ({cfg.micro_batch_size} per micro-batch x {accum} "
        f"accumulation x {world} process{'es' if world > 1 else ''}), lr {cfg.lr:g} {cfg.schedule}, on {device}"
        + (f" with {cfg.threads} thread{'s' * (cfg.threads > 1)}" if device.startswith("cpu") and cfg.threads else "")
        + (f", resuming at step {resumed_at}" if resumed_at is not None else ""),
        f"files: {cfg.out_dir}/ (ckpt.pt, best.pt, log.jsonl, summary.json with every setting)" if cfg.save else
        f"files: {cfg.out_dir}/ (log.jsonl, summary.json with every setting; --no-save: no checkpoints)",
    ]
    if cfg.prompt_loss_weight == 0 and not plain:
        lines.append("note: IT never trains on the instructions, so the held-out *prompt* loss (val_prompt_loss) "
                     "is not optimized and may rise; compare runs by val_output_loss")
    return lines


def other_loss_command(argv: list[str], cfg: TrainConfig) -> str:
    """The same training command with the other loss, into its own out_dir: the comparison to run next."""
    other = "im" if cfg.prompt_loss_weight == 0 else "it"
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in NOT_MOVED:
            skip = True  # and its value, the next argument
        elif not arg.startswith(tuple(f + "=" for f in NOT_MOVED)):
            kept.append(arg)
    init = [] if cfg.init_from == "scratch" else ["--init_from", cfg.init_from]
    return shlex.join(["python", "train.py", *init, *kept, "--loss", other, "--out_dir", f"{cfg.out_dir}-{other}"])


def summary_lines(summary: dict, cfg: TrainConfig, argv: list[str] | None) -> list[str]:
    """Where the results are, the final held-out numbers (every metric of the last evaluation), what to run next."""
    final, out = summary["final"], cfg.out_dir
    minutes, seconds = divmod(round(summary["time_s"]), 60)
    lines = [f"done: {summary['steps']} of {summary['total_steps']} steps in {minutes}m{seconds:02d}s, "
             f"{summary['tokens_per_s']:,.0f} tokens/s"]
    if final.get("val_output_loss") is not None:
        lines.append(f"held-out output loss {final['val_output_loss']:.4f} (best {summary['best_val_output_loss']:.4f}"
                     f"{', kept in best.pt' if cfg.save else ''}), train output loss {final['train_output_loss']:.4f}")
    rest = {k: v for k, v in final.items() if k not in ("step", "val_output_loss", "train_output_loss")}
    if rest:
        lines.append("final: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in rest.items()))
    if not cfg.save:  # nothing to resume, evaluate or talk to
        return lines + [f"files: {out}/summary.json, {out}/log.jsonl (--no-save: no checkpoints)"]
    lines.append(f"files: {out}/ckpt.pt (last), {out}/best.pt (best held-out output loss), {out}/summary.json, "
                 f"{out}/log.jsonl")
    if not summary["finished"]:
        lines.append(f"next: python train.py --init_from resume --out_dir {shlex.quote(out)}   # continue the run")
        return lines
    if summary.get("plain_text"):  # a base model: what comes next is instruction tuning
        data = "synthetic-qa --synth_examples 40" if cfg.data == "synthetic-corpus" else "your_instructions.json"
        lines.append(f"next: python -m scripts.experiments.compare --init_from {shlex.quote(out)} --data {data}   "
                     f"# tune this base: IT vs IM")
        return lines
    lines.append(f"next: python eval.py --ckpt {shlex.quote(out)} --generate   # exact match, BLEU, ROUGE-L")
    if argv is not None and cfg.init_from != "resume":
        lines.append(f"      {other_loss_command(argv, cfg)}   # the other loss, to compare")
    lines.append(f"      python sample.py --ckpt {shlex.quote(out)}   # talk to the model")
    return lines


# ----------------------------------------------------------------------------- the program

def train(cfg: TrainConfig, argv: list[str] | None = None) -> dict:
    """Train as configured and return the summary (also in out_dir/summary.json), with every evaluation."""
    cli.validate(cfg)
    if cfg.init_from == "scratch":
        scratch_config(cfg, vocab_size=257)  # the model's sizes (n_embd % n_head == 0 ...), checked before any work
    typed = cli.given_settings(TrainConfig, argv) if argv is not None else None
    dist, owned = distributed.join_distributed(cfg.device)
    try:
        with rundir.hold_out_dir(cfg.out_dir) if dist.is_main else contextlib.nullcontext():  # one run per out_dir
            session = setup(cfg, dist, typed)
            with distributed.StopAtStepBoundary() as signals:  # from here on, Ctrl-C stops between steps
                return run(session, signals, argv)
    finally:
        if owned:
            distributed.destroy_distributed()


def main() -> None:
    train(cli.parse_config(TrainConfig, description=__doc__), sys.argv[1:])


if __name__ == "__main__":
    cli.run_cli(main)
