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
import sys
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from data import Batch, Example, answer_start, build_data, collate
from imgpt.batching import micro_batches, plan_epoch, split_sizes
from imgpt.checkpoint import all_rng_states, check_training_checkpoint, load_checkpoint, save_checkpoint
from imgpt.cli import UserError, given_settings, parse_config, run_cli, validate
from imgpt.device import amp_dtype_for, cpu_threads, set_up_device, varlen_problem
from imgpt.distributed import (Dist, StopAtStepBoundary, destroy_distributed, join_distributed, local_rank_zero_first,
                               stop_requested, sum_over_ranks)
from imgpt.files import write_text_atomic
from imgpt.mfu import training_flops
from imgpt.prefetch import Prefetcher
from imgpt.rundir import (RUN_FILES, Progress, check_length, hold_out_dir, keep_log_until, prepare_out_dir, restore,
                          resume_config, resume_tokenizer)
from imgpt.schedule import lr_at
from imgpt.splits import SYNTHETIC
from imgpt.tokenizers import get_tokenizer, tokenizer_record
from imgpt.train_config import TrainConfig, resolve, scratch_config
from imgpt.train_report import startup_lines, summary_lines
from loss import StepLoss, example_totals, mark_dynamic, run_micro_batches, step_batches, sum_totals
from metrics import evaluate
from model import GPT, load_model, model_from_payload

# ----------------------------------------------------------------------------- checkpoints and evaluation

class TrainingDiverged(UserError):
    """The loss became NaN or infinite: the run stops; the last good checkpoint stays in place."""


# ----------------------------------------------------------------------------- the run

@dataclass
class Session:
    """Everything one run holds, passed to the small functions below."""
    cfg: TrainConfig
    d: Dist
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
    prog: Progress
    peak: float | None = None  # the GPU's peak FLOP/s at the training precision, for MFU (None: not logged)
    pending: list = dataclasses.field(default_factory=list)  # step records whose device numbers are unread
    clock: float = 0.0  # when the pending steps began
    speeds: list = dataclasses.field(default_factory=list)  # tokens/s of every step read so far
    totals: object = None  # loss.example_totals of the training set: each step adds up its rows
    output_totals: object = None  # the same at prompt and template weight 0: --loss_reduction output's N

    def path(self, name: str) -> str:
        return os.path.join(self.cfg.out_dir, name)

    def log(self, record: dict) -> None:
        if self.d.is_main:
            with open(self.path("log.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def amp(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.d.device).type, dtype=self.amp_dtype)


def prepare(s: Session, ids: list[int]) -> list[Batch | None]:
    """This rank's micro-batches of the step `ids`, collated on the CPU (in pinned memory for CUDA). A pure
    function of the ids, so a background thread can build the next step's while the GPU runs this one."""
    cfg, d = s.cfg, s.d
    accum = math.ceil(len(ids) / (cfg.micro_batch_size * d.world_size))  # fewer for a short (or token-capped) step
    return step_batches(s.train, micro_batches(ids, d.rank, d.world_size, accum), cfg.prompt_loss_weight,
                        cfg.template_loss_weight, cfg.pack, cfg.loss_reduction, pin=d.device.startswith("cuda"))


def train_step(s: Session, ids: list[int], batches: list[Batch | None]) -> dict:
    """One optimizer step on the examples `ids` (the whole step, all ranks), given this rank's micro-batches.

    Nothing here waits for the GPU: the step's weight sum is counted from `ids`, the batches carry the indices
    of their weighted positions, and the loss and gradient norm stay on the device until `flush` reads them."""
    cfg, d = s.cfg, s.d
    lr = lr_at(s.prog.step, s.total, cfg.lr, cfg.min_lr, math.ceil(cfg.warmup_ratio * s.total), cfg.schedule)
    for group in s.optimizer.param_groups:
        group["lr"] = lr
    weight_sum, n_examples, tokens, weighted = sum_totals(s.totals, ids)
    divisor = n_examples if cfg.loss_reduction == "sequence" else weight_sum  # loss.py: the three reductions
    if cfg.loss_reduction == "output":
        divisor = sum_totals(s.output_totals, ids)[0]
    batches = [None if b is None else b.to(d.device) for b in batches]
    dummy = None
    if d.enabled and batches[-1] is None:  # a short last step left this rank without its final micro-batch
        dummy = collate([s.train[ids[0]]], cfg.prompt_loss_weight, cfg.template_loss_weight).to(d.device)
    for b in batches + [dummy]:
        if cfg.compile and b is not None:
            mark_dynamic(b)
    sums = run_micro_batches(s.step_loss, batches, dummy, max(divisor, 1e-12), d.world_size, s.ref, cfg.kl_coef,
                             s.amp(), s.scaler)
    s.scaler.unscale_(s.optimizer)  # clip the true gradient, not the fp16-scaled one
    grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip or math.inf)
    s.scaler.step(s.optimizer)
    s.scaler.update()
    s.optimizer.zero_grad(set_to_none=True)
    s.prog.step, s.prog.index = s.prog.step + 1, s.prog.index + 1
    c = s.model.config
    flops = training_flops(c.n_layer, c.n_embd, c.vocab_size, [len(s.train[i].ids) - 1 for i in ids],
                           weighted if cfg.skip_zero else tokens, reference=s.ref is not None)
    rec = {"step": s.prog.step, "sums": sums.to(grad_norm.device), "lr": lr, "grad_norm": grad_norm,
           "weighted_tokens": weight_sum, "tokens": tokens, "flops": flops}
    s.pending.append(rec)
    return rec


def flush(s: Session, collective: bool = True) -> list[dict]:
    """Read the pending steps' losses and gradient norms from the device (one wait for the GPU, one
    all-reduce), stop if any diverged, and log them; returns their records. Called at log intervals and before
    every checkpoint, so a checkpoint never holds a diverged model."""
    if not s.pending:
        return []
    recs, s.pending = s.pending, []
    sums = torch.stack([r["sums"] for r in recs])  # (k, 2): this rank's [cross-entropy, KL] per step, on the device
    if collective:
        sums = sum_over_ranks(sums, s.d)
    norms = torch.stack([r["grad_norm"] for r in recs]).to(sums.device).double().unsqueeze(1)  # (k, 1)
    values = torch.cat([sums, norms], 1).tolist()  # (k, 3): the one read of the device
    dt = (time.perf_counter() - s.clock) / len(recs)  # the GPU ran asynchronously: only the average is known
    s.clock = time.perf_counter()
    for rec, (ce, kl, grad_norm) in zip(recs, values):
        if not math.isfinite(ce + kl) or (not s.scaler.is_enabled() and not math.isfinite(grad_norm)):
            raise TrainingDiverged(f"loss {ce + kl} / gradient norm {grad_norm} at step {rec['step']}: stopped; "
                                   f"the last good checkpoint (if any) is in {s.cfg.out_dir}. Try a lower --lr or "
                                   f"float32")
        del rec["sums"]
        rec.update(loss=ce, grad_norm=grad_norm, tokens_per_s=rec["tokens"] / dt, step_time=dt)
        s.speeds.append(rec["tokens_per_s"])
        if s.cfg.kl_coef:
            rec["kl"] = kl
        if s.peak is not None:
            rec["mfu"] = rec["flops"] / dt / (s.peak * s.d.world_size)
        if collective or not s.d.enabled:
            s.log(rec)
    return recs


def save(s: Session, name: str, weights_only: bool = False) -> None:
    """Write out_dir/name atomically: everything needed to continue exactly; or, with weights_only (best.pt),
    what evaluation needs: without the optimizer's two moments it is a third of the size. A model that is not
    finite (nor its optimizer moments, in ckpt.pt) is never written: it would replace the last good checkpoint."""
    moments = [] if weights_only else [v for state in s.optimizer.state.values() for v in state.values()
                                       if torch.is_tensor(v) and v.is_floating_point()]
    if not torch.stack([torch.isfinite(t).all() for t in [*s.model.parameters(), *moments]]).all():  # one host sync
        raise TrainingDiverged(f"the weights (or their optimizer moments) hold NaN or inf at step {s.prog.step}: "
                               f"{name} not written; the last good checkpoint (if any) is in {s.cfg.out_dir}. Try a "
                               "lower --lr or float32")
    rngs = [] if weights_only else all_rng_states(s.d)  # a collective: every rank calls it
    if not (s.d.is_main and s.cfg.save):
        return
    payload = {"model": s.model.state_dict(), "model_config": asdict(s.model.config), "tokenizer": s.tok_record,
               "config": asdict(s.cfg), "step": s.prog.step, "best_val_loss": s.prog.best_val_loss,
               "history": s.prog.history}
    if not weights_only:
        payload.update({"optimizer": s.optimizer.state_dict(), "scaler": s.scaler.state_dict(),
                        "data_state": {"epoch": s.prog.epoch, "index": s.prog.index}, "rng": rngs})
    save_checkpoint(s.path(name), payload)


def eval_and_save(s: Session) -> dict:
    """Score the model, log it, keep best.pt by held-out output loss, and save ckpt.pt."""
    flush(s)  # a diverged step stops the run here, before it could reach a checkpoint
    bs = max(1, s.cfg.micro_batch_size or s.cfg.batch_size // s.d.world_size)
    eos = s.tok.eot_token if s.cfg.data in SYNTHETIC else None  # one-word answers
    r = {"step": s.prog.step, **evaluate(s.model, s.val, s.train_sample, bs, s.d.device, s.d, s.amp_dtype, eos)}
    if not s.val:
        r["val_output_loss"] = r["val_prompt_loss"] = None
    s.log({"eval": r})
    if s.d.is_main:
        tqdm.write(" ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))
    if bad := [k for k, v in r.items() if isinstance(v, float) and not math.isfinite(v)]:
        raise TrainingDiverged(f"evaluation at step {s.prog.step} gave {', '.join(bad)} = NaN or inf: stopped "
                               f"without saving; the last good checkpoint (if any) is in {s.cfg.out_dir}")
    s.prog.history.append(r)
    if r["val_output_loss"] is not None and r["val_output_loss"] < s.prog.best_val_loss:
        s.prog.best_val_loss = r["val_output_loss"]
        save(s, "best.pt", weights_only=True)
    if s.prog.step > 0:  # step 0's ckpt.pt would hold the start a new run rebuilds: nothing to resume from
        save(s, "ckpt.pt")
    s.clock = time.perf_counter()  # the next steps' speed leaves out this evaluation
    return r


def setup(cfg: TrainConfig, d: Dist, typed: set[str] | None = None) -> Session:
    """Build the model, data, optimizer and progress, from scratch, a pretrained model or a checkpoint. `typed`:
    the settings the user gave (rundir.resume_config), which a resumed run takes or refuses."""
    ckpt, ckpt_path = None, os.path.join(cfg.out_dir, "ckpt.pt")
    if cfg.init_from == "resume":
        ckpt = load_checkpoint(ckpt_path)
        check_training_checkpoint(ckpt, ckpt_path)
    if d.is_main:
        prepare_out_dir(cfg)  # before the checkpoint's config replaces init_from=resume
    if ckpt is not None:
        cfg = resume_config(ckpt["config"], cfg, ckpt_path, typed)
    device_type = torch.device(d.device).type
    cfg = resolve(cfg, device_type, d.world_size)
    micro, accum = split_sizes(cfg.batch_size, cfg.micro_batch_size, d.world_size)  # fail before any work
    cfg = dataclasses.replace(cfg, micro_batch_size=micro)
    amp_dtype = amp_dtype_for(cfg.dtype, device_type)
    if device_type == "cpu":  # the count used goes into the run's config: a thread count reproduces its digits
        cfg = dataclasses.replace(cfg, threads=cpu_threads(cfg.threads, d.world_size, d.is_main))
    peak = set_up_device(d.device, cfg.threads, amp_dtype, d.is_main)
    if cfg.pack and device_type == "cuda" and (why := varlen_problem(amp_dtype is not None, cfg.dropout)):
        cfg = dataclasses.replace(cfg, pack=False)  # packing changes only the speed, never the update
        if d.is_main:
            print(f"--pack: {why}; training on padded rows instead (the same updates, slower)")
    with local_rank_zero_first(d):  # one download per node; the other ranks then read the cache
        if ckpt is None:
            model, tok = build_model(cfg)
            ref = copy.deepcopy(model) if cfg.kl_coef else None
        else:
            model = model_from_payload(ckpt, ckpt_path)
            tok = resume_tokenizer(ckpt, ckpt_path, model.config.vocab_size)
            ref = build_model(cfg)[0] if cfg.kl_coef else None
        if cfg.block_size > model.config.block_size:
            raise UserError(f"--block_size {cfg.block_size} exceeds the model's context {model.config.block_size}")
        cfg = dataclasses.replace(cfg, block_size=cfg.block_size or model.config.block_size)
        train_ex, val_ex, stats = build_data(cfg, tok)
    steps_per_epoch = len(plan_epoch(cfg, train_ex, 0))
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)

    model.to(d.device).train()
    if ref is not None:  # frozen, in float32 as the model is: at step 0 both run the same computation, KL exactly 0
        ref.to(d.device).eval().requires_grad_(False)  # (a bf16 copy rounds embeddings and LayerNorms: KL > 0)
    step_loss = StepLoss(model, cfg.skip_zero, cfg.neftune_alpha)
    if cfg.compile:
        step_loss = torch.compile(step_loss)
    if d.enabled:
        step_loss = DDP(step_loss, device_ids=[d.local_rank] if device_type == "cuda" else None)
    optimizer = model.configure_optimizers(cfg.weight_decay, cfg.lr, (cfg.beta1, cfg.beta2))  # fused on CPU/CUDA
    scaler = torch.amp.GradScaler(device_type, enabled=amp_dtype == torch.float16)
    prog = Progress()
    torch.manual_seed(cfg.seed + d.rank)  # each rank its own dropout masks and NEFTune noise
    random.seed(cfg.seed + d.rank)
    if ckpt is not None:
        prog = restore(ckpt, ckpt_path, optimizer, scaler, d)
        check_length(cfg, prog.step, total)
    sample = sorted(random.Random(cfg.seed).sample(range(len(train_ex)), min(cfg.train_eval_size, len(train_ex))))
    val_eval = val_ex[:cfg.eval_examples] if cfg.eval_examples else val_ex
    s = Session(cfg, d, model, step_loss, ref, optimizer, scaler, amp_dtype, tok, tokenizer_record(tok),
                train_ex, val_eval, [train_ex[i] for i in sample], accum, total, prog, peak,
                totals=example_totals(train_ex, cfg.prompt_loss_weight, cfg.template_loss_weight),
                output_totals=example_totals(train_ex, 0.0) if cfg.loss_reduction == "output" else None)
    if d.is_main:
        os.makedirs(cfg.out_dir, exist_ok=True)
        if ckpt is None:  # a new run (prepare_out_dir allowed it): nothing of an earlier run stays to mix in
            for name in RUN_FILES:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(s.path(name))
            open(s.path("log.jsonl"), "w").close()
        else:  # the steps logged after the checkpoint run again: each step is logged once
            keep_log_until(s.path("log.jsonl"), prog.step)
        print("\n".join(startup_lines(cfg, model.config, model.num_params(), len(train_ex), len(val_ex), stats, accum,
                                      d.world_size, total, d.device, prog.step if ckpt else None,
                                      steps_per_epoch)))
    return s


def run(s: Session, signals: StopAtStepBoundary | None = None, argv: list[str] | None = None) -> dict:
    """The loop: steps in the data plan's order, evaluations, checkpoints; returns the summary. When `signals`
    caught Ctrl-C (or SIGTERM), the loop saves ckpt.pt between two steps and raises KeyboardInterrupt. `argv`,
    the command line's flags if any, lets the closing lines spell out the comparison run."""
    cfg, prog, t0 = s.cfg, s.prog, time.perf_counter()
    stop = min(s.total, cfg.stop_step) if cfg.stop_step else s.total
    planned, plan = -1, []
    bar = tqdm(total=s.total, initial=prog.step, disable=not s.d.is_main,
               desc=f"train (prompt weight {cfg.prompt_loss_weight:g})")
    if prog.step == 0 and cfg.eval_interval:
        eval_and_save(s)  # the starting point of the loss curves
    prefetch = Prefetcher(lambda ids: prepare(s, ids))
    try:
        s.clock = time.perf_counter()
        while prog.step < stop:
            # a signal came during the last step (checked at log intervals under torchrun): stop here
            if signals is not None and stop_requested(signals, s.d, prog.step, cfg.log_interval):
                flush(s)
                save(s, "ckpt.pt")
                if s.d.is_main:
                    tqdm.write(f"interrupted: checkpoint at step {prog.step} in {cfg.out_dir}; "
                               "--init_from resume continues")
                raise KeyboardInterrupt
            if planned != prog.epoch:  # the same plan for any rank count and after a resume
                plan, planned = plan_epoch(cfg, s.train, prog.epoch), prog.epoch
            if prog.index >= len(plan):
                prog.epoch, prog.index = prog.epoch + 1, 0
                continue
            train_step(s, plan[prog.index], prefetch.batches(plan, prog.epoch, prog.index))
            bar.update(1)
            if prog.step % cfg.log_interval == 0 or prog.step == stop:  # the only wait for the GPU
                rec = flush(s)[-1]
                bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
            if cfg.eval_interval and prog.step % cfg.eval_interval == 0 and prog.step < stop:
                eval_and_save(s)
    finally:
        prefetch.close()
        bar.close()
    last = eval_and_save(s)
    summary = {"steps": prog.step, "total_steps": s.total, "finished": prog.step >= s.total,
               "time_s": time.perf_counter() - t0, "train_examples": len(s.train), "val_examples": len(s.val),
               "world_size": s.d.world_size, "accum": s.accum,
               "plain_text": not any(answer_start(e.segs) for e in s.train),  # no instruction: language modelling
               "tokens_per_s": sum(s.speeds) / max(1, len(s.speeds)),
               "final": last, "best_val_output_loss": prog.best_val_loss if s.val else None,
               "history": prog.history, "config": asdict(cfg)}
    if s.d.is_main:
        write_text_atomic(s.path("summary.json"), json.dumps(summary, indent=1))
        print("\n".join(summary_lines(summary, cfg, argv)))
    return summary


def train(cfg: TrainConfig, argv: list[str] | None = None) -> dict:
    """Train as configured and return the summary (also in out_dir/summary.json), with every evaluation."""
    validate(cfg)
    typed = given_settings(TrainConfig, argv) if argv is not None else None
    d, owned = join_distributed(cfg.device)
    try:
        with hold_out_dir(cfg.out_dir) if d.is_main else contextlib.nullcontext():  # one run per out_dir
            s = setup(cfg, d, typed)
            with StopAtStepBoundary() as signals:  # from here on, Ctrl-C stops between steps (setup may download)
                return run(s, signals, argv)
    finally:
        if owned:
            destroy_distributed()


def main() -> None:
    train(parse_config(TrainConfig, description=__doc__), sys.argv[1:])


def build_model(cfg: TrainConfig) -> tuple[GPT, object]:
    """The initial model and its tokenizer; the same on every rank."""
    if cfg.init_from == "scratch":
        tok = get_tokenizer(cfg.tokenizer or "byte")
        torch.manual_seed(cfg.seed)
        return GPT(scratch_config(cfg, tok.n_vocab)), tok
    model, tok = load_model(cfg.init_from)
    if cfg.tokenizer:
        tok = get_tokenizer(cfg.tokenizer)
    for m in model.modules():  # a pretrained config carries its own dropout; the flag decides here
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
        elif isinstance(getattr(m, "dropout", None), float):  # attention's dropout probability
            m.dropout = cfg.dropout
    model.config.dropout = cfg.dropout
    return model, tok


if __name__ == "__main__":
    run_cli(main)
