"""The course's exercises, as the kit blanks and grades them.

Each code exercise is one or more whole functions of the real code (`Blank`: file, qualified name, the hint its
blank raises, the docstring its blank keeps). The handout replaces each body by that docstring and
    raise NotImplementedError("Exercise N: hint (docs/assignments.md)")
A docstring elsewhere that would give the answer away is replaced too (`Docstring`). Graders are the tests
marked `@pytest.mark.exN` (pytest.ini registers the marks), wherever they live. `needs`: the exercises whose code
an exercise's graders call; solve those first (docs/assignments.md's table shows the same column).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass


@dataclass(frozen=True)
class Blank:
    file: str  # relative to the repository root, with /
    function: str  # qualified name: "loss_weights", "GPT.next_logits"
    hint: str  # what NotImplementedError says
    docstring: str  # the blank's docstring: the contract, never the answer


@dataclass(frozen=True)
class Docstring:
    file: str
    function: str  # qualified name; "" for the module's docstring
    text: str  # what the handout says instead


@dataclass(frozen=True)
class Exercise:
    number: int
    title: str
    points: int
    code: tuple[Blank, ...] = ()  # none: a written answer only
    written: bool = False  # a written part, graded by hand with the instructor's rubric
    needs: tuple[int, ...] = ()
    docstrings: tuple[Docstring, ...] = ()


def text(block: str) -> str:
    """A docstring written indented in the table below, as the handout prints it (dedented, no outer blank lines)."""
    return textwrap.dedent(block).strip("\n")


EXERCISES = {e.number: e for e in [
    Exercise(1, "the loss weights", 10, (
        Blank("data.py", "loss_weights", "one weight per segment kind (TEMPLATE ... PAD); token 0 is never a target",
              text("""
                  weights[t] for predicting token t from the tokens before it: the one place where IT
                  (prompt_loss_weight 0) and IM (1) differ. segs[t] is token t's segment: TEMPLATE, SYSTEM, USER,
                  ASSISTANT, EOT or PAD.""")),),
        docstrings=(Docstring("data.py", "", text("""
            Instruction data -> token ids + one loss weight per token. IT and IM differ in ONE number.

            Every record becomes a list of messages; the one chat template cuts it into pieces, each
            with a segment (TEMPLATE, SYSTEM, USER, ASSISTANT, EOT); weights[t] (exercise 1) weighs the
            loss of predicting ids[t] from ids[:t]. Then: truncation, batching, a deterministic order.
            At the bottom, `python data.py stats|show`: look at a dataset before training on it.""")),)),
    Exercise(2, "split-invariant normalization", 15, (
        Blank("loss.py", "micro_batch_loss", "scale ce + kl_coef * kl so gradients add up to those of the whole step",
              text("""
                  What one micro-batch backpropagates, from its summed weighted cross-entropy `ce` and KL `kl`.

                  divisor: the weight sum of the whole step (every micro-batch of every rank); world: the number of
                  ranks; dummy: the micro-batch a rank with nothing left runs so as to join the gradient all-reduce.
                  Summed over micro-batches and combined over ranks as DDP does, the gradients must be those of
                  sum(w * (CE + kl_coef * KL)) / sum(w) over the whole step.""")),),
        needs=(1, 4, 5),
        docstrings=(Docstring("loss.py", "", text("""
            The loss of one optimizer step, which must not depend on how the step's batch is split.

            The step's loss is  sum over every weighted token of w * CE  /  N, with N counted over the WHOLE step: every
            micro-batch on every rank (step_divisor: the sum of w, by default), from the step's examples before any
            forward pass. Splitting 8 examples as 8 x 1, 2 x 4 or 2 processes x 2 x 2 must give the same update
            (exercise 2, micro_batch_loss; tests/test_train.py checks it to 1e-6).

            Read in this order: step_divisor (N, for each --loss_reduction), micro_batch_loss (one micro-batch's share),
            run_micro_batches (the forward and backward of one rank's micro-batches).""")),)),
    Exercise(3, "the KV cache", 20, (
        Blank("model.py", "KVCache.update",
              "write after the self.len tokens already stored; return everything stored so far", text("""
                  Store this layer's new keys/values (B, nh, T, hs) after the self.len tokens already stored (in
                  self.k, self.v: (n_layer, B, nh, max_len, hs), allocated at the first call); return all stored so
                  far.""")),
        Blank("model.py", "GPT.next_logits", "run only the tokens the cache has not seen, at their positions in "
              "their row, with a mask wherever queries must not see every key", text("""
                  (B, V) logits for the token after each row of left-padded `tokens` (B, T), `valid` marking real ones.

                  With a cache only the tokens it has not seen run through the model, one or several at a time. Past
                  the block size (or without a cache) the last block_size tokens run from scratch, as the model has no
                  position beyond that. padded: whether any row is left-padded, if the caller knows (reading `valid`
                  would wait for the GPU).""")),
    ), needs=(5,)),
    Exercise(4, "skip what costs nothing", 10, (
        Blank("model.py", "head_positions", "which positions change the loss? Their indices in the flattened tokens",
              text("""
                  (B, T) weights -> (N,) int64: the indices, into the flattened (B * T) tokens, of the positions that
                  must reach the output head, in row-major order (row 0's first). Training calls it on the CPU, in
                  data.collate.""")),)),
    Exercise(5, "block-diagonal attention", 15, (
        Blank("model.py", "attention_mask", "a causal part shifted by `start`, and a same-document part", text("""
            (B, 1, Tq, Tk) bool: query i (at absolute position start + i) may see key j iff j <= start + i and both
            carry the same document id. Padding (id -1) only sees padding, so no row is empty (an empty row is
            NaN).""")),),
        needs=(1, 4)),
    Exercise(6, "acc vs acc_norm", 10, (
        Blank("imgpt/benchmarks.py", "pick_acc_norm", "like pick_acc, on log-probability per character", text("""
            lm-eval `acc_norm`: the highest log-probability per character of the choice (`len(choice)`, no
            delimiter).""")),)),
    Exercise(7, "the paper's two factors", 10, written=True),
    Exercise(8, "the continuous prompt-loss weight", 10, (
        Blank("scripts/experiments/prompt_weight.py", "best_weight",
              "the vertex of the parabola through the best point and its neighbours (or an end)", text("""
                  The weight in [weights[0], weights[-1]] where the loss is lowest, as far as the points tell.

                  weights increase strictly (and need not be evenly spaced); losses[i] was measured at weights[i]. If
                  the lowest measured loss is at an end of the grid, that end; otherwise the vertex of the parabola
                  through the lowest point and its two neighbours (which lies between those neighbours).""")),),
        written=True),
]}
