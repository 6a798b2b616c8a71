"""Weights & Biases beside TensorBoard: ``train.wandb=PROJECT`` (the optional extra ``declip[wandb]``).

Rank 0 opens one W&B run with the resolved config, and every record the metrics writer writes (the training
scalars TensorBoard gets, every evaluation, the closing summary) is logged to it as ``KIND/NAME`` against a
``step`` metric of our own: the trainer only sees a tracker with ``log`` and ``close``. W&B's own ``_step`` only
counts calls; plotting against ``step`` lets a resumed run log again the steps that a killed run had logged past
its last checkpoint (W&B refuses a decreasing ``_step``).

The W&B run id is kept in the run folder (``wandb_run.json``), so ``--resume`` continues the same W&B run
(``resume="allow"``); a fresh run (or ``--overwrite``) starts a new one. W&B's local files go under
``train.output_dir``/wandb unless ``WANDB_DIR`` says otherwise; ``WANDB_MODE=offline`` logs without a network
(``wandb sync`` uploads later). wandb is imported only when enabled: its import takes seconds.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path

from ..config import Config
from ..errors import ConfigError

log = logging.getLogger("declip")

RUN_ID_FILE = "wandb_run.json"  # {"id", "project", "entity"} of the W&B run this folder's run logs to
STEP_METRIC = "step"


def check_tracker_installed(cfg: Config) -> None:
    """``train.wandb`` set but wandb missing: one line naming the extra, before anything is built (the check
    only looks the module up; it does not import it)."""
    if cfg.train.wandb and importlib.util.find_spec("wandb") is None:
        raise ConfigError(f"train.wandb={cfg.train.wandb}: wandb is not installed; pip install 'declip[wandb]' "
                          "(or leave train.wandb empty)")


class WandbTracker:
    """One open W&B run: ``log`` takes what the metrics writer writes; ``close`` finishes the run."""

    def __init__(self, run):
        self.run = run

    def log(self, step: int, values: dict, kind: str) -> None:
        scalars = {f"{kind}/{k}": v for k, v in values.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if scalars:
            self.run.log({**scalars, STEP_METRIC: step})

    def close(self) -> None:
        self.run.finish()


def _stored_run_id(output_dir: Path) -> str | None:
    try:
        return json.loads((output_dir / RUN_ID_FILE).read_text(encoding="utf-8")).get("id") or None
    except (OSError, ValueError, AttributeError):  # none yet, or unreadable: a new W&B run
        return None


def open_tracker(cfg: Config, output_dir: Path, enabled: bool, resumed: bool) -> WandbTracker | None:
    """The W&B run of this training run (None when ``train.wandb`` is empty or on ranks other than 0).
    ``resumed``: the run continues a checkpoint, so it continues the W&B run whose id the folder holds."""
    tr = cfg.train
    if not (enabled and tr.wandb):
        return None
    check_tracker_installed(cfg)
    import wandb

    stored = _stored_run_id(output_dir) if resumed else None  # None: W&B draws a new run id
    # WANDB_DIR and WANDB_MODE, read now and passed on: wandb reads the environment once per process
    root = Path(os.environ.get("WANDB_DIR") or output_dir)
    (root / "wandb").mkdir(parents=True, exist_ok=True)
    try:
        run = wandb.init(project=tr.wandb, entity=tr.wandb_entity or None, name=tr.wandb_name or None,
                         tags=tr.wandb_tags or None, id=stored, resume="allow", config=cfg.to_dict(), dir=str(root),
                         mode=os.environ.get("WANDB_MODE") or None, settings=wandb.Settings(console="off"))
    except Exception as e:  # noqa: BLE001  (no login, no network, a refused project: W&B's own error types vary)
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"train.wandb={tr.wandb}: W&B could not start the run ({reason}); run wandb login, "
                          "or set WANDB_MODE=offline to log locally and `wandb sync` later") from None
    run.define_metric(STEP_METRIC)
    run.define_metric("*", step_metric=STEP_METRIC)
    (output_dir / RUN_ID_FILE).write_text(json.dumps({"id": run.id, "project": tr.wandb,
                                                      "entity": tr.wandb_entity}) + "\n", encoding="utf-8")
    offline = os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun")
    log.info("W&B run %s in project %s (%s)%s", run.id, tr.wandb, "continued" if stored else "new",
             ", offline: `wandb sync` uploads it" if offline else "")
    return WandbTracker(run)
