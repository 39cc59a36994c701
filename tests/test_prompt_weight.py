"""scripts/experiments/prompt_weight.py (exercise 8's grader): where between IT and IM the held-out loss is lowest."""
import json
import os

import pytest

from imgpt.cli import UserError
from scripts.experiments import prompt_weight as pw


@pytest.mark.ex8
def test_best_weight_interpolates_around_the_lowest_point_on_an_uneven_grid():
    weights, losses = [0.0, 0.1, 0.3, 1.0], [2.10, 1.97, 1.90, 2.05]  # not a parabola: only 3 points decide
    want = 0.4791139240506  # worked out by hand (not by code a student could copy from here)
    got = pw.best_weight(weights, losses)
    assert got == pytest.approx(want, abs=1e-9), (
        f"weights {weights}, losses {losses}: got {got:.4f}, expected {want:.4f}, the vertex of the parabola through "
        f"the lowest point (0.3) and its two neighbours (0.1, 1); the grid is uneven, so use the general formula")


@pytest.mark.ex8
def test_best_weight_at_an_end_is_that_end():
    assert pw.best_weight([0.0, 0.3, 1.0], [2.2, 2.0, 1.9]) == 1.0, "lowest at IM (weight 1): nothing to interpolate"
    assert pw.best_weight([0.0, 0.3, 1.0], [1.8, 2.0, 2.1]) == 0.0, "lowest at IT (weight 0): nothing to interpolate"
    assert pw.best_weight([0.0, 0.5, 1.0], [2.0, 2.0, 2.0]) == 0.0, "all equal: the first weight"


@pytest.mark.ex8
def test_mean_loss_by_weight_and_the_report_command(tmp_path, capsys):
    runs = [{"mode": m, "seed": s, "metrics": {"heldout_loss": loss}, "steps": 1, "time_s": {}, "history": [],
             "train_settings": {}, "eval_settings": []} for m, s, loss in [
        ("it", 0, 2.2), ("it", 1, 2.0), ("plw0.3", 0, 1.8), ("plw0.3", 1, 1.9), ("im", 0, 2.0), ("im", 1, 2.1),
        ("im+neft", 0, 0.1)]]
    assert pw.mean_loss_by_weight(runs) == pytest.approx({0.0: 2.1, 0.3: 1.85, 1.0: 2.05})
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"data": {}, "runs": runs}))
    pw.main([str(path)])
    out = capsys.readouterr().out
    want = 0.5223404255319  # the vertex through these three means, worked out by hand
    assert "| 0.3 | 1.850 |" in out and f"near prompt-loss weight {want:.2f}" in out, out
    with pytest.raises(UserError, match="none.json: no such file"):
        pw.main([str(tmp_path / "none.json")])
    with pytest.raises(UserError, match="3 or more prompt-loss weights"):
        pw.report({0.0: 2.0, 1.0: 1.9})
