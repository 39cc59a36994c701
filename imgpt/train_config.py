"""Every setting of a training run, with its default and one line of help: `python train.py --help` prints them.

Recipes fill the optimization settings left unset (None): a fast one to train the tiny model from scratch on a
CPU, the paper's for fine-tuning a pretrained GPT-2, and two for the built-in world's pretrained regime. `resolve` applies them; `validate` rejects bad values
before any work starts.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass

from imgpt.checkpoint import CheckpointError, saved_train_config
from imgpt.cli import UserError, kind_error, opt
from imgpt.device import check_device
from imgpt.formats import SPLIT_DEFAULTS, WORLD_TASKS

# None in an optimization field means "the recipe's value": one recipe to train the tiny model from scratch on a
# CPU in minutes, and the paper's recipe (Shi et al. 2024, App. A) for fine-tuning a pretrained GPT-2.
SCRATCH_RECIPE = dict(batch_size=32, micro_batch_size=0, epochs=0.0, max_steps=400, lr=3e-3, min_lr_ratio=0.1,
                      schedule="cosine", warmup_ratio=0.05, weight_decay=0.1, eval_interval=50)
# Its evaluations (each also writes ckpt.pt: 12 bytes a parameter, weights and Adam's two moments; and best.pt, 4,
# when the held-out loss improved) come every 200 steps: 6 in an 812-step Alpaca run, at most 12 GB at 124M (every
# 50 steps wrote up to 36 GB, fsynced, more time than the training took on a GPU).
PAPER_RECIPE = dict(batch_size=128, micro_batch_size=8, epochs=2.0, max_steps=0, lr=2e-5, min_lr_ratio=0.0,
                    schedule="linear", warmup_ratio=0.03, weight_decay=0.0, eval_interval=200)
# The pretrained regime of the built-in world, on a CPU: pretraining on its corpus takes 1000 steps of 24 documents
# to know every fact, also deep into a context (documents of up to 8 lines left the facts unknown past ~150 tokens);
# tuning that base on a few questions takes small, gentle steps (at 1e-3 both losses erase what the base knew).
# 300 steps of 16 are 23 epochs of the default 200 questions and 100 of README's 40 (an epoch: steps of 16, 16, 8),
# far past the paper's 2 to 10: scripts/experiments/budget.py compares IT and IM at those. Measured in README "The pretrained regime".
CORPUS_RECIPE = {**SCRATCH_RECIPE, "batch_size": 24, "max_steps": 1000}
BASE_TUNING_RECIPE = {**SCRATCH_RECIPE, "batch_size": 16, "max_steps": 300, "lr": 3e-4}
# On a GPU, 8 examples of ~200 tokens leave most of it idle waiting for kernel launches: up to 32 per forward. Not all
# fit: 32 rows of 1024 tokens need ~130 GB at 1.5B parameters, so train.py lowers it to what fits the GPU's free
# memory by imgpt/memory.py's model unless --micro_batch_size is given. The update does not change: the step's loss
# is normalized over the whole batch (loss.py).
LOSS_PRESETS = {"it": 0.0, "im": 1.0}  # --loss it|im: the prompt loss weight each names (Shi et al. Eq. 3, Eq. 4)
GPU_MICRO_BATCH = 32


@dataclass
class TrainConfig:
    # where from, where to
    out_dir: str = opt("out", "directory for ckpt.pt (last), best.pt, log.jsonl and summary.json")
    overwrite: bool = opt(False, "replace a run already in out_dir (without it, train.py refuses; --init_from "
                          "resume continues it)")
    init_from: str = opt("scratch", "scratch | gpt2 | gpt2-medium | gpt2-large | gpt2-xl | a checkpoint or HF "
                         "directory | resume (continue out_dir/ckpt.pt with its saved config)")
    model: str = opt("tiny", "model preset for --init_from scratch (tiny, gpt2, gpt2-medium, ...)")
    n_layer: int = opt(0, "override the preset's number of layers (scratch only; 0 = the preset's)")
    n_head: int = opt(0, "override the preset's attention heads (scratch only; 0 = the preset's)")
    n_embd: int = opt(0, "override the preset's width (scratch only; 0 = the preset's)")
    block_size: int = opt(0, "context length; for a pretrained model a shorter maximum example length (0 = model's)")
    dropout: float = opt(0.0, "dropout probability during training")
    tokenizer: str = opt("", "byte | gpt2 | a directory with vocab.json + merges.txt ('' = byte from scratch, "
                         "the checkpoint's otherwise)")
    # data
    data: str = opt(SPLIT_DEFAULTS["data"], "'synthetic' (the built-in offline task), 'synthetic-corpus' (its world as "
                    "plain text, to pretrain a base), 'synthetic-qa' (questions about it, to tune that base), an "
                    "instruction file (Alpaca, Dolly, prompt/completion, messages or ShareGPT, JSON or JSONL) or plain "
                    "text (.txt, paragraphs; or JSONL with a 'text' field)")
    format: str = opt("", "file format ('' = auto-detect)")
    val_size: float = opt(SPLIT_DEFAULTS["val_size"], "held-out examples split off a data file (a count, or a fraction "
                          "if < 1); the synthetic task's held-out set is --synth_heldout")
    num_examples: int = opt(SPLIT_DEFAULTS["num_examples"], "train on a random subset of this many examples (0 = all)")
    synth_examples: int = opt(SPLIT_DEFAULTS["synth_examples"], "synthetic task: training examples (more of them "
                              "ask about training facts only; the held-out set stays the same)", low=1)
    synth_heldout: int = opt(SPLIT_DEFAULTS["synth_heldout"], "synthetic task: held-out facts, one question each", low=1)
    synth_facts: int = opt(SPLIT_DEFAULTS["synth_facts"], "synthetic task: facts stated in each instruction "
                           "(sets the instruction length; synthetic-qa allows 0)", low=0)
    synth_mentions: int = opt(SPLIT_DEFAULTS["synth_mentions"], "synthetic task: how often training instructions "
                              "state each held-out fact", low=1)
    synth_keys: int = opt(SPLIT_DEFAULTS["synth_keys"], "synthetic task: facts in the world (at most 260)", low=2)
    synth_seed: int = opt(SPLIT_DEFAULTS["synth_seed"], "synthetic task: seed of the generated examples")
    # loss
    loss: str = opt("it", "it: loss on outputs only; im: loss on instructions too (prompt weight 0 or 1)")
    prompt_loss_weight: float | None = opt(None, "weight of instruction tokens; overrides --loss (IT=0, IM=1)")
    template_loss_weight: float = opt(0.0, "weight of template tokens like <|user|> (paper: 0)")
    loss_reduction: str = opt("token", "token: sum(w*loss)/sum(w) over the step (the paper's code: a mean over "
                              "every trained token); output: sum(w*loss)/(output tokens' weight), so IM = IT's loss "
                              "+ prompt weight x the prompt's summed loss on IT's scale; sequence: mean over examples "
                              "of each example's weighted mean (what the paper's code did at one example per GPU)")
    kl_coef: float = opt(0.0, "add kl_coef * KL(model || initial model) on the weighted positions (paper Table 3)")
    neftune_alpha: float = opt(0.0, "NEFTune: uniform noise alpha/sqrt(L*d) on token embeddings (paper: 5)")
    skip_zero: bool = opt(True, "positions with loss weight 0 skip the output head and the cross-entropy")
    pack: bool = opt(False, "pack several examples into each row (attention kept inside each) instead of padding")
    # optimization; None = the recipe's value (from scratch: fast CPU demo; otherwise the paper's GPT-2 recipe)
    batch_size: int | None = opt(None, "examples per optimizer step, all ranks (scratch 32, fine-tune 128)", low=1)
    batch_tokens: int = opt(0, "also cap each step at this many padded tokens: batch_size is then the most "
                            "examples per step, and each step accumulates as many micro-batches as it needs")
    micro_batch_size: int | None = opt(None, "examples per forward pass and rank (0 = batch/ranks; fine-tune 8)")
    epochs: float | None = opt(None, "passes over the training set: the run's length unless --max_steps sets it "
                               "(fine-tune 2; giving it sets max_steps to 0). With --init_from resume: extends or "
                               "shortens the run, see --max_steps")
    max_steps: int | None = opt(None, "optimizer steps; give it or --epochs, not both (scratch 400; synthetic-qa "
                                "from a base 300: 23 epochs of its 200 examples, 100 of 40; 0 = use epochs). "
                                "With --init_from resume: a finished run continues to the new length, its learning-"
                                "rate schedule stretched to it (the rate jumps back to where the longer schedule "
                                "is at the resumed step)")
    stop_step: int = opt(0, "stop after this step with a checkpoint, schedule unchanged, e.g. for job time limits")
    lr: float | None = opt(None, "peak learning rate (scratch 3e-3, fine-tune 2e-5)")
    min_lr: float | None = opt(None, "learning rate at the end of the decay (scratch lr/10, fine-tune 0)")
    schedule: str | None = opt(None, "linear | cosine | constant, after warmup (scratch cosine, fine-tune linear)")
    warmup_ratio: float | None = opt(None, "fraction of steps of linear warmup (scratch 0.05, fine-tune 0.03)")
    weight_decay: float | None = opt(None, "AdamW weight decay on matrices only (scratch 0.1, fine-tune 0)")
    beta1: float = opt(0.9, "AdamW beta1")
    beta2: float = opt(0.999, "AdamW beta2")
    grad_clip: float = opt(1.0, "clip the gradient norm to this (0 = no clipping)")
    # evaluation and logs
    eval_interval: int | None = opt(None, "evaluate and save every N steps (0 = only at the end; scratch 50)")
    eval_examples: int = opt(200, "held-out examples scored at each evaluation (0 = all)")
    train_eval_size: int = opt(100, "training examples scored at each evaluation (the overfitting gap)")
    log_interval: int = opt(10, "refresh the progress bar every N steps (log.jsonl gets every step)", low=1)
    # system
    device: str = opt("auto", "auto | cpu | cuda | mps")
    threads: int = opt(0, "CPU threads (0 = one per core, or 1 when other programs keep every core busy; "
                       "the count used is saved with the run: one thread count reproduces its digits)")
    dtype: str = opt("auto", "auto (bf16 autocast on CUDA if supported, else float32) | float32 | bfloat16 | float16")
    compile: bool = opt(False, "torch.compile the model")
    grad_checkpoint: bool = opt(False, "activation checkpointing: keep only each block's input and recompute the "
                                "block in backward (less memory, about a third more compute; the same update)")
    head_chunk: int = opt(0, "run the output head + loss this many positions at a time, never holding every "
                          "position's float32 log-softmax (less memory, the same update; e.g. 4096; 0 = all at once)")
    seed: int = opt(SPLIT_DEFAULTS["seed"], "seed of initialization, data split and order, dropout and noise")
    save: bool = opt(True, "write checkpoints")

    def validate(self) -> None:
        """Fail before any work, with the flag's name, on settings that cannot work."""
        c = resolve(self)
        checks = [
            (c.loss in LOSS_PRESETS, f"--loss must be it or im, got {c.loss!r}"),
            (c.prompt_loss_weight >= 0 and c.template_loss_weight >= 0, "loss weights must be >= 0"),
            (c.loss_reduction in ("token", "output", "sequence"), "--loss_reduction must be token, output or sequence"),
            (c.schedule in ("linear", "cosine", "constant"), "--schedule must be linear, cosine or constant"),
            (c.dtype in ("auto", "float32", "bfloat16", "float16"), f"--dtype {c.dtype!r} is not one of the choices"),
            (c.lr > 0, f"--lr must be > 0, got {c.lr}"),
            (0 <= c.min_lr <= c.lr, f"--min_lr must be between 0 and --lr {c.lr}, got {c.min_lr}"),
            (0 <= c.warmup_ratio < 1, f"--warmup_ratio must be in [0, 1), got {c.warmup_ratio}"),
            (c.weight_decay >= 0 and c.grad_clip >= 0, "--weight_decay and --grad_clip must be >= 0"),
            (0 <= c.beta1 < 1 and 0 <= c.beta2 < 1, "--beta1 and --beta2 must be in [0, 1)"),
            (0 <= c.dropout < 1, f"--dropout must be in [0, 1), got {c.dropout}"),
            (c.kl_coef >= 0 and c.neftune_alpha >= 0, "--kl_coef and --neftune_alpha must be >= 0"),
            (c.micro_batch_size == 0 or c.batch_size % c.micro_batch_size == 0,
             f"--batch_size {c.batch_size} is not divisible by --micro_batch_size {c.micro_batch_size}"),
            (c.max_steps > 0 or c.epochs > 0, "set --max_steps or --epochs above 0"),
            (not (self.max_steps and self.epochs), f"--max_steps {self.max_steps} and --epochs {self.epochs} both "
             f"set the run's length: give one of them (--max_steps 0 --epochs {self.epochs} counts in epochs)"),
            (c.init_from in ("scratch", "resume") or not (c.n_layer or c.n_head or c.n_embd),
             "--n_layer/--n_head/--n_embd only apply to --init_from scratch"),
        ]
        for ok, message in checks:  # check_numbers (imgpt.cli.validate) has already checked each number's range
            if not ok:
                raise UserError(message)
        check_device(c.device)
        check_same_world(c)


def saved_config(ckpt: str) -> dict | None:
    """The TrainConfig a train.py checkpoint saved (checkpoint.saved_train_config), each value of its setting's kind."""
    saved = saved_train_config(ckpt)
    if saved is not None:
        check_saved_config(saved, os.path.join(ckpt, "ckpt.pt") if os.path.isdir(ckpt) else ckpt)
    return saved


def check_saved_config(saved: dict, path: str) -> None:
    """A checkpoint's settings each of the kind train.py writes (no null where a number belongs): one line naming
    the file and the setting, not a traceback where the value is first used."""
    types = typing.get_type_hints(TrainConfig)
    for key, value in saved.items():
        if key in types and (wrong := kind_error(value, types[key], strings_parse=False)) is not None:
            raise CheckpointError(f"{path}: key 'config': setting {key!r}: {wrong}")


def check_same_world(cfg: TrainConfig) -> None:
    """Questions about the built-in world only make sense to a base that learned the same world."""
    if cfg.data != "synthetic-qa" or cfg.init_from in ("scratch", "resume"):
        return
    base = saved_config(cfg.init_from)
    if base and base.get("data") in WORLD_TASKS and base.get("synth_keys") != cfg.synth_keys:
        raise UserError(f"--synth_keys {cfg.synth_keys}: the base {cfg.init_from} learned a world of "
                        f"{base.get('synth_keys')} keys; tune it with --synth_keys {base.get('synth_keys')}")


def recipe_for(cfg: TrainConfig) -> dict:
    """From scratch: the fast CPU recipe (the built-in world's corpus: longer); a pretrained model: the paper's,
    except for a base of the built-in world tuned on its questions."""
    if cfg.init_from == "scratch":
        return CORPUS_RECIPE if cfg.data == "synthetic-corpus" else SCRATCH_RECIPE
    return BASE_TUNING_RECIPE if cfg.data == "synthetic-qa" else PAPER_RECIPE


def resolve(cfg: TrainConfig, device_type: str = "cpu", world_size: int = 1) -> TrainConfig:
    """Fill every None with the recipe's value, and --loss into prompt_loss_weight. Fine-tuning on CUDA gets
    bigger micro-batches (GPU_MICRO_BATCH, or the batch's share of each process if smaller)."""
    recipe = recipe_for(cfg)
    if (cfg.epochs is None) != (cfg.max_steps is None):  # one length given: it wins over the recipe's other one
        recipe = {**recipe, "epochs": 0.0} if cfg.epochs is None else {**recipe, "max_steps": 0}
    filled = {k: v for k, v in recipe.items() if hasattr(cfg, k) and getattr(cfg, k) is None}
    if recipe is PAPER_RECIPE and device_type == "cuda" and cfg.micro_batch_size is None:
        batch = cfg.batch_size if cfg.batch_size is not None else recipe["batch_size"]
        filled["micro_batch_size"] = max(1, min(GPU_MICRO_BATCH, batch // world_size))
    if cfg.min_lr is None:
        filled["min_lr"] = recipe["min_lr_ratio"] * (cfg.lr if cfg.lr is not None else recipe["lr"])
    if cfg.prompt_loss_weight is None:
        filled["prompt_loss_weight"] = LOSS_PRESETS.get(cfg.loss, 0.0)  # an unknown --loss fails in validate
    return dataclasses.replace(cfg, **filled)
