"""See an example as the loss sees it: every token marked by its loss weight (`python data.py show`).

On a terminal each token gets a background by its weight (grey: not trained on; green: weight 1; amber: between),
two shades alternating so token boundaries show. Elsewhere (a file, a pipe, README) runs of tokens with the same
weight are bracketed: `[...]` is trained on with weight 1, `[...]x0.3` with weight 0.3, plain text not at all.
Pure functions of (token text, weight) pairs: no tokenizer, no model.
"""
from __future__ import annotations

from dataclasses import dataclass

from imgpt.cli import UserError, opt
from imgpt.train_config import LOSS_PRESETS

RESET = "\033[0m"
SHADES = {"zero": ("\033[48;5;236m", "\033[48;5;239m"), "part": ("\033[48;5;94m", "\033[48;5;130m"),
          "full": ("\033[48;5;22m", "\033[48;5;28m")}  # 256-colour backgrounds, two per kind


def visible(text: str) -> str:
    """Whitespace a reader would miss, spelled out: one example stays one line."""
    return text.replace("\n", "\\n").replace("\t", "\\t")


def kind(weight: float) -> str:
    return "zero" if weight == 0 else "full" if weight == 1 else "part"


def colored(tokens: list[tuple[str, float]]) -> str:
    """ANSI: each token on the background of its weight's kind, alternating shades."""
    return "".join(f"{SHADES[kind(w)][i % 2]}{visible(t)}" for i, (t, w) in enumerate(tokens)) + RESET


def bracketed(tokens: list[tuple[str, float]]) -> str:
    """Plain text: each run of equal nonzero weight in brackets (with its weight unless 1), zero weight bare."""
    runs: list[tuple[str, float]] = []
    for text, w in tokens:
        if runs and runs[-1][1] == w:
            runs[-1] = (runs[-1][0] + text, w)
        else:
            runs.append((text, w))
    marked = (visible(t) if w == 0 else f"[{visible(t)}]" + ("" if w == 1 else f"x{w:g}") for t, w in runs)
    return "".join(marked)


def legend(color: bool) -> str:
    if color:
        return (f"{SHADES['zero'][0]} weight 0 {RESET} {SHADES['part'][0]} 0 < weight < 1 {RESET} "
                f"{SHADES['full'][0]} weight 1 {RESET}  (shades alternate per token)")
    return "[...] weight 1, [...]xW weight W, unmarked weight 0 (the loss for predicting each token)"


def render(tokens: list[tuple[str, float]], color: bool) -> str:
    """One example, one line: a count of the tokens trained on, then the marked tokens."""
    head = f"{sum(w > 0 for _, w in tokens)} of {len(tokens)} tokens trained on: "
    return head + (colored(tokens) if color else bracketed(tokens))


@dataclass
class ShowConfig:
    loss: str = opt("it", "it, im, or the prompt loss weight as a number (e.g. 0.3)")
    n: int = opt(3, "how many examples to show, from the start")
    format: str | None = opt(None, "input format ('' = detect)")
    tokenizer: str = opt("", "gpt2, byte or a directory ('' = byte for synthetic, else gpt2)")
    max_len: int = opt(1024, "truncate examples to this many tokens, as training would")
    color: str = opt("auto", "auto (colour on a terminal), always, or never (brackets)")

    def prompt_loss_weight(self) -> float:
        try:
            return LOSS_PRESETS[self.loss] if self.loss in LOSS_PRESETS else float(self.loss)
        except ValueError:
            raise UserError(f"--loss: expected it, im or a number, got {self.loss!r}") from None

    def use_color(self, is_tty: bool) -> bool:
        if self.color not in ("auto", "always", "never"):
            raise UserError(f"--color: expected auto, always or never, got {self.color!r}")
        return self.color == "always" or (self.color == "auto" and is_tty)
