"""Weights & Biases (train.wandb=PROJECT, train/tracking.py), in W&B's offline mode: no network, no account.

The offline run's ``run-ID.wandb`` file is read back with W&B's own record type (wandb.proto's ``Record``); the
file is W&B's record log (LevelDB's log format: 32 KiB blocks of CRC-checked chunks after a 7-byte ``:W&B``
header), unframed by ``wandb_records`` below."""
import json
import struct
import time
from pathlib import Path

import pytest

from declip.cli import main as cli_main
from declip.config import ConfigError
from helpers import TINY, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
BLOCK, HEADER = 32768, 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def wandb_records(path: Path) -> list:
    """Every record of an offline run's .wandb file, as wandb.proto Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    records, pos, pending = [], HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # a block's tail too short for a chunk header is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0:  # zero padding up to the block end
            pos += left
            continue
        chunk, pos = data[pos + HEADER:pos + HEADER + length], pos + HEADER + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def finished_records(path: Path, timeout_s: float = 60.0) -> list:
    """The records of a finished offline run: W&B's service may still be writing the file when ``finish()``
    returns in a process that goes on (it is flushed at exit), so wait for the run's ``exit`` record."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = wandb_records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history(records) -> list[dict]:
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]


def offline_runs(root: Path) -> list[Path]:
    return sorted(root.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture
def offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    root = tmp_path / "wandb_dir"
    root.mkdir()
    for key, value in {"WANDB_MODE": "offline", "WANDB_DIR": str(root), "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wc"),
                       "WANDB_DATA_DIR": str(tmp_path / "wd")}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return root


def test_the_wandb_keys_are_checked_up_front():
    for bad, key in ((["train.wandb_name=x"], "train.wandb_name"), (["train.wandb_tags=[a]"], "train.wandb_tags"),
                     (["train.wandb_entity=me"], "train.wandb_entity"), (["train.wandb=a/b"], "train.wandb"),
                     (["train.wandb=p", "train.wandb_entity=t:x"], "train.wandb_entity"),
                     (["train.wandb=p", "train.wandb_tags=['']"], "train.wandb_tags")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            tiny_config(*bad)
    cfg = tiny_config("train.wandb=declip-test", "train.wandb_name=r1", "train.wandb_tags=[a, b]")
    assert (cfg.train.wandb, cfg.train.wandb_name, cfg.train.wandb_tags) == ("declip-test", "r1", ["a", "b"])


def test_without_wandb_installed_the_run_stops_in_one_line_naming_the_extra(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert cli_main(["train", *TINY, f"train.output_dir={out}", "train.wandb=declip-test"]) == 2  # a config error
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.wandb" in err[0] and "pip install 'declip[wandb]'" in err[0], err
    assert not out.exists()  # refused before anything was built or written


def test_an_offline_run_logs_the_scalars_config_and_evaluations_and_resume_continues_it(tmp_path, offline):
    """Two short runs (the first evaluated at steps 2 and 4, the second resumed to step 6): ~20 s, mostly the two
    W&B starts and the evaluations whose records are checked."""
    from declip.train.trainer import train
    from helpers import metrics

    out = tmp_path / "run"
    keys = [f"train.output_dir={out}", "train.wandb=declip-test", "train.wandb_name=tiny", "train.wandb_tags=[t1]",
            "train.ckpt_every=2", "eval.every=2"]
    train(tiny_config(*keys, "train.steps=4", small=True))
    (first,) = offline_runs(offline)
    run_id = json.loads((out / "wandb_run.json").read_text())["id"]
    assert first.name == f"run-{run_id}.wandb"
    records = finished_records(first)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project, run.display_name, list(run.tags)) == (run_id, "declip-test", "tiny", ["t1"])
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["method"]["name"] == "declip" and config["train"]["wandb"] == "declip-test"
    rows = history(records)
    logged = {(r["step"], k): v for r in rows for k, v in r.items() if "/" in k and not k.startswith("_")}
    for rec in metrics(out):  # every training scalar metrics.jsonl (and TensorBoard) got, at its step
        assert logged[(rec["step"], "train/loss")] == pytest.approx(rec["loss"])
        assert logged[(rec["step"], "train/lr")] == pytest.approx(rec["lr"])
    evals = metrics(out, "eval")
    assert [e["step"] for e in evals] == [2, 4]  # eval.every=2 and the end
    for e in evals:
        assert logged[(e["step"], "eval/builtin/top1")] == pytest.approx(e["builtin/top1"])

    train(tiny_config(*keys, "train.steps=6", small=True), resume="latest")
    runs = offline_runs(offline)
    assert len(runs) == 2 and all(p.name == f"run-{run_id}.wandb" for p in runs)  # the same W&B run, continued
    (second,) = [p for p in runs if p != first]
    resumed = {(r["step"], k) for r in history(finished_records(second)) for k in r if k.startswith("train/")}
    assert {(5, "train/loss"), (6, "train/loss")} <= resumed and (4, "train/loss") not in resumed


def test_a_fresh_run_in_the_folder_starts_a_new_wandb_run(tmp_path, offline):
    from declip.train.trainer import train

    out = tmp_path / "run"
    keys = [f"train.output_dir={out}", "train.wandb=declip-test", "train.steps=2", "eval.builtin=false"]
    train(tiny_config(*keys, small=True))
    first = json.loads((out / "wandb_run.json").read_text())["id"]
    train(tiny_config(*keys, small=True), overwrite=True)
    second = json.loads((out / "wandb_run.json").read_text())["id"]
    assert first != second and len(offline_runs(offline)) == 2


def test_a_wandb_that_cannot_start_is_one_config_line(tmp_path, offline, monkeypatch):
    from declip.train.tracking import open_tracker

    monkeypatch.setenv("WANDB_MODE", "no-such-mode")  # refused by wandb.init itself, before any network
    with pytest.raises(ConfigError, match=r"^train\.wandb=declip-test: W&B could not start the run \(.+\); run wandb "
                                          r"login, or set WANDB_MODE=offline") as raised:
        open_tracker(tiny_config("train.wandb=declip-test"), tmp_path, enabled=True, resumed=False)
    assert "\n" not in str(raised.value)
    assert open_tracker(tiny_config("train.wandb=declip-test"), tmp_path, enabled=False, resumed=False) is None
