"""Evaluation during training, on rank 0 alone, on the unwrapped towers (no DDP collective inside).

Nothing here raises: bad evaluation inputs (a missing folder, an unknown ``eval.best_metric``) and non-finite
weights are logged and score nothing, so they cannot cost the run or its final checkpoint.
"""
from __future__ import annotations

import torch

from ..config import Config
from .health import nonfinite_weights
from .metrics import MetricsWriter, log


def score_towers(method: torch.nn.Module, cfg: Config, device: torch.device, step: int,
                 writer: MetricsWriter) -> tuple[dict, tuple[str, float] | None]:
    """The evaluation's results (written and logged) and the ``(name, value)`` that ``eval.best_metric`` picks
    from them; ``({}, None)`` when nothing could be scored."""
    from ..eval.suite import EvalDataError, best_metric, headline, run_evaluation

    bad = nonfinite_weights(method.clip.state_dict())
    if bad:
        log.warning("skipping evaluation at step %d: non-finite weights in %s", step, bad[:3])
        return {}, None
    results: dict = {}
    try:
        results = run_evaluation(method.clip, cfg, device, dense=method.eval_heads())
        if not results:
            return {}, None
        writer.write(step, results, kind="eval")
        log.info("eval @ step %d: %s", step, headline(results))
        return results, best_metric(results, cfg)
    except EvalDataError as e:
        log.error("evaluation @ step %d failed: %s", step, e)
        return results, None
