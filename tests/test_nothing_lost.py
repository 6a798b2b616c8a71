"""Issue 38, items 1, 2 and 5: nothing of the user's lost, nothing misleading.

1. ``declip data to-wds`` never touches a file it did not write: a non-empty ``--out`` is refused without
   ``--overwrite`` (which removes only the layout's own files), an ``--out`` in the data's own folders is refused,
   and a failure midway leaves no half-written folder.
2. A NUL byte in a filename (manifest, labelled manifest, CSV) is one ``bad_line`` naming FILE:LINE in every
   reader, never a ``ValueError: embedded null byte`` traceback.
5. One-line messages (key or path named, a next step that works, no raw ``[Errno N]``, no traceback) for a
   ``.lock`` folder, a read-only output folder, an ``--out`` that is a file, ``declip plot`` on an empty metrics
   file, a full disk (no ``--- Logging error ---``), a small ``data check --timeout`` and device names.
"""
import errno
import json
import os
import threading
import time

import pytest
from PIL import Image

from declip.cli import main as cli_main
from declip.data.errors import BadSample
from helpers import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
NUL_NAME = "a\u0000b.png"


@pytest.fixture(autouse=True)
def own_logging():
    """A run in this process points the root logger at the test's captured stdout and its train.log: give the
    next test the handlers it had (a closed capture stream would print '--- Logging error ---' there)."""
    import logging

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for handler in root.handlers[:]:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.handlers[:], root.level = handlers, level


def one_line(capsys, *argv, code=None) -> str:
    rc = cli_main(list(argv))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "Errno" not in err[0], err[0]
    if code is not None:
        assert rc == code, (rc, err)
    else:
        assert rc != 0, err
    return err[0]


@pytest.fixture
def own(tmp_path):
    """The data's own folder: images, a labelled and a caption manifest, and the user's classnames.txt and
    zeroshot_classification_templates.txt beside them (what --out pointed here would have overwritten)."""
    data = tmp_path / "data"
    data.mkdir()
    names = ["red", "green"]
    for i in range(4):
        Image.new("RGB", (24, 24), (200 * (i % 2 == 0), 200 * (i % 2), 40)).save(data / f"{i}.png")
    (data / "labels.jsonl").write_text("".join(
        json.dumps({"filename": f"{i}.png", "label": i % 2, "label_name": names[i % 2]}) + "\n" for i in range(4)))
    (data / "captions.jsonl").write_text("".join(
        json.dumps({"filename": f"{i}.png", "caption": f"a {names[i % 2]} square"}) + "\n" for i in range(4)))
    (data / "classnames.txt").write_text("my red\nmy green\n")
    (data / "zeroshot_classification_templates.txt").write_text("my template {c}\n")
    return data


def _to_wds(manifest, root, out, *extra):
    return ["data", "to-wds", str(manifest), "--root", str(root), "--out", str(out), *extra]


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------ 1. to-wds
@pytest.mark.parametrize("manifest", ["labels.jsonl", "captions.jsonl"])
def test_to_wds_refuses_the_datas_own_folder_and_keeps_its_files(own, capsys, manifest):
    before = _snapshot(own)
    for out, overwrite in ((own, ()), (own, ("--overwrite",)), (own / "wds", ()), (own / "wds", ("--overwrite",))):
        line = one_line(capsys, *_to_wds(own / manifest, own, out, *overwrite), code=2)
        assert f"--out {out}" in line and "choose an --out outside" in line, line
    assert _snapshot(own) == before, "the class names, templates and images are all as they were"


def test_to_wds_refuses_an_out_holding_the_root_or_the_manifest(own, tmp_path, capsys):
    images = own / "test"  # --overwrite removes the layout's test/ folder: here it would be the images
    images.mkdir()
    (images / "0.tar").write_bytes(b"mine")
    line = one_line(capsys, *_to_wds(own / "labels.jsonl", images, own, "--overwrite"), code=2)
    assert f"--out {own}" in line and "choose an --out outside" in line, line
    line = one_line(capsys, *_to_wds(own / "labels.jsonl", own, tmp_path, "--overwrite"), code=2)
    assert f"--out {tmp_path}" in line and "choose an --out outside" in line, line
    assert (images / "0.tar").read_bytes() == b"mine"


def test_to_wds_refuses_a_non_empty_out_and_overwrite_removes_only_its_own_files(own, tmp_path, capsys):
    out = tmp_path / "wds"
    out.mkdir()
    (out / "notes.md").write_text("mine")
    line = one_line(capsys, *_to_wds(own / "labels.jsonl", own, out), code=2)
    assert f"--out {out} is not empty (notes.md)" in line and "--overwrite" in line, line
    assert sorted(p.name for p in out.iterdir()) == ["notes.md"]

    assert cli_main(_to_wds(own / "labels.jsonl", own, out, "--overwrite", "--classnames",
                            str(own / "classnames.txt"))) == 0
    assert (out / "classnames.txt").read_text() == "my red\nmy green\n"
    (out / "test" / "mine.txt").write_text("mine too")
    assert cli_main(_to_wds(own / "captions.jsonl", own, out, "--overwrite")) == 0  # the other kind
    capsys.readouterr()
    assert (out / "notes.md").read_text() == "mine" and (out / "test" / "mine.txt").read_text() == "mine too"
    assert not (out / "classnames.txt").exists() and not (out / "zeroshot_classification_templates.txt").exists()
    assert (out / "dataset_type.txt").read_text() == "retrieval\n"
    assert sorted(p.name for p in (out / "test").iterdir()) == ["0.tar", "mine.txt", "nshards.txt"]
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "no staging folder left"


def test_to_wds_failing_midway_leaves_no_half_written_folder(own, tmp_path, capsys, monkeypatch):
    import declip.eval.to_wds as to_wds

    real, calls = to_wds.wds_image, []

    def full_disk_after_two(path):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(path)

    monkeypatch.setattr(to_wds, "wds_image", full_disk_after_two)
    out = tmp_path / "new" / "wds"
    line = one_line(capsys, *_to_wds(own / "labels.jsonl", own, out), code=2)
    assert "No space left on device" in line and str(tmp_path / "new") in line, line
    assert not (tmp_path / "new").exists(), "the folders it created are removed again"

    monkeypatch.setattr(to_wds, "wds_image", real)
    assert cli_main(_to_wds(own / "labels.jsonl", own, out)) == 0
    converted = _snapshot(out)
    calls.clear()
    monkeypatch.setattr(to_wds, "wds_image", full_disk_after_two)
    one_line(capsys, *_to_wds(own / "captions.jsonl", own, out, "--overwrite"), code=2)
    assert _snapshot(out) == converted, "the earlier conversion is kept whole"
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == [], "no staging folder left"


def test_to_wds_out_that_is_a_file_or_holds_a_file_named_test(own, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    for out in (afile, afile / "wds"):
        line = one_line(capsys, *_to_wds(own / "labels.jsonl", own, out), code=2)
        assert f"--out {out}: {afile} is a file, not a folder" in line and "choose another --out" in line, line
    out = tmp_path / "wds"
    out.mkdir()
    (out / "test").write_text("mine")
    line = one_line(capsys, *_to_wds(own / "labels.jsonl", own, out, "--overwrite"), code=2)
    assert f"{out / 'test'} is a file" in line and "move it away or choose another --out" in line, line
    assert afile.read_text() == "mine" and (out / "test").read_text() == "mine"


def test_to_wds_read_only_out_is_one_line(own, tmp_path, capsys, monkeypatch):
    import tempfile

    real = tempfile.mkdtemp

    def read_only(*args, **kwargs):
        if kwargs.get("dir") is None:  # torch's own temporary folders
            return real(*args, **kwargs)
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(kwargs["dir"]))

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)  # root in this sandbox: chmod would not stop a write
    line = one_line(capsys, *_to_wds(own / "labels.jsonl", own, tmp_path / "wds"), code=2)
    assert f"cannot write {tmp_path}" in line and "Permission denied" in line and "--out" in line, line


# ----------------------------------------------------------------------------------- 2. a NUL byte
@pytest.fixture
def nul(own):
    """Line 3 of each manifest and row 3 of the CSV names a file with a NUL byte in it."""
    def insert(path, line):
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[:2] + [line] + lines[2:]))

    insert(own / "labels.jsonl", json.dumps({"filename": NUL_NAME, "label": 0, "label_name": "red"}) + "\n")
    insert(own / "captions.jsonl", json.dumps({"filename": NUL_NAME, "caption": "a red square"}) + "\n")
    (own / "pairs.tsv").write_text("filepath\ttitle\n0.png\ta red square\na\x00b.png\ta red square\n"
                                   "1.png\ta green square\n")
    return own


@pytest.mark.parametrize("manifest", ["labels.jsonl", "captions.jsonl"])
def test_nul_in_a_filename_is_a_bad_line_in_data_check(nul, capsys, manifest):
    assert cli_main(["data", "check", str(nul / manifest), "--root", str(nul), "--threads", "2"]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in err and "null byte" not in err, err
    assert "bad_line: 1" in out and f"{nul / manifest}:3: 'filename' holds a NUL byte" in out, out


def test_nul_in_a_filename_is_a_bad_line_for_training_sources(nul):
    from declip.data.csv_source import CsvSource
    from declip.data.manifest import ManifestSource

    for source, where in ((ManifestSource(nul / "captions.jsonl", nul), "captions.jsonl:3"),
                          (CsvSource(nul / "pairs.tsv", nul), "pairs.tsv:3"),
                          (CsvSource(nul / "pairs.tsv"), "pairs.tsv:3")):  # no data.root: paths as written
        with pytest.raises(BadSample) as e:
            source.load(1 if isinstance(source, CsvSource) else 2)
        assert e.value.reason == "bad_line" and where in e.value.detail and "NUL byte" in e.value.detail


def test_nul_in_a_filename_is_a_bad_line_for_eval_and_to_wds(nul, tmp_path, capsys):
    from declip.eval.common import read_manifest

    for name in ("labels.jsonl", "captions.jsonl"):
        man = read_manifest(nul / name, lambda rec: None)
        assert len(man.records) == 4 and len(man.bad) == 1 and f"{name}:3: 'filename' holds a NUL byte" in man.bad[0]
        assert cli_main(_to_wds(nul / name, nul, tmp_path / name)) == 0
        out = capsys.readouterr().out
        assert "wrote 4 " in out and "skipped: 1 bad lines" in out and f"{name}:3:" in out, out


def test_nul_in_a_filename_does_not_stop_training(nul, tiny_cfg):
    from declip.train.trainer import train

    summary = train(tiny_cfg("method.name=clip", "train.steps=2", "train.batch_size=4", "eval.builtin=false",
                             "data.source=manifest", f"data.path={nul / 'captions.jsonl'}", f"data.root={nul}"))
    assert summary["step"] == 2


# ----------------------------------------------------------------------------------- 5. one line each
def test_lock_that_is_a_folder_is_one_line(tmp_path, capsys):
    (tmp_path / "run" / ".lock").mkdir(parents=True)
    line = one_line(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", code=1)
    assert f"{tmp_path / 'run' / '.lock'} is a folder" in line and "train.output_dir" in line, line


def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    import declip.train.run_lock as run_lock

    real_open = os.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_lock.os, "open", read_only)  # root here: chmod would not stop the write
    line = one_line(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", code=1)
    assert f"train.output_dir={tmp_path / 'run'}: cannot write {tmp_path / 'run' / '.lock'}" in line, line
    assert "Read-only file system" in line and "choose another train.output_dir" in line, line


def test_plot_of_an_empty_metrics_file_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    line = one_line(capsys, "plot", str(tmp_path / "run"), code=1)
    assert f"{tmp_path / 'run' / 'metrics.jsonl'}: no train or eval record to plot yet" in line, line


class _Disk:
    """A disk that holds ``free`` more bytes: a write past it raises ENOSPC, as a full disk does."""

    def __init__(self, free: int):
        self.free = free

    def wrap(self, f):
        disk = self

        class Full:
            def __getattr__(self, name):
                return getattr(f, name)

            def write(self, text):
                if len(text) > disk.free:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                disk.free -= len(text)
                return f.write(text)

        return Full()


def test_full_disk_is_one_error_line_naming_the_file_and_no_logging_error(tmp_path, capsys, monkeypatch):
    import logging

    import declip.train.metrics as metrics

    disk = _Disk(free=0)
    real_open = logging.FileHandler._open
    monkeypatch.setattr(logging.FileHandler, "_open", lambda self: disk.wrap(real_open(self)))
    monkeypatch.setattr(metrics, "open", lambda *a, **k: disk.wrap(open(*a, **k)), raising=False)
    run = tmp_path / "run"
    assert cli_main(["train", *TINY, f"train.output_dir={run}", "method.name=clip", "eval.builtin=false"]) == 1
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith(f"error: cannot write {run / 'metrics.jsonl'} (No space left on device;"), lines
    assert lines[:-1] == [f"warning: cannot write {run / 'train.log'} (No space left on device): the log goes on "
                          "on the console only"], lines


def test_full_disk_in_tensorboard_names_the_folder(tmp_path, capsys, monkeypatch):
    from tensorboard.summary.writer import record_writer

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    run = tmp_path / "run"
    assert cli_main(["train", *TINY, f"train.output_dir={run}", "method.name=clip", "eval.builtin=false",
                     "train.tensorboard=true"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "Exception in thread" not in err and "Errno" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"error: cannot write {run / 'tensorboard'} (No space left on device;"), line
    assert "start the run again with --overwrite" in line


def test_tensorboard_failing_mid_run_names_the_folder(tmp_path, monkeypatch):
    from tensorboard.summary.writer import record_writer

    from declip.errors import RunDirError
    from declip.train.run_files import Scalars

    scalars = Scalars(tmp_path / "tensorboard", None)
    scalars.add("train/loss", 1.0, 1)

    def full(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(record_writer.RecordWriter, "write", full)
    deadline = time.monotonic() + 30
    with pytest.raises(RunDirError, match=f"cannot write {tmp_path / 'tensorboard'} \\(No space left on device;"):
        while time.monotonic() < deadline:  # the writer thread fails first; the next scalar raises its error
            scalars.add("train/loss", 2.0, 2)
            time.sleep(0.01)
    scalars.close()  # the failed flush is not raised again


def test_small_check_timeout_reports_slow_reads_as_timeouts_not_a_hung_mount(own, capsys, monkeypatch):
    import declip.data.bounded as bounded
    import declip.data.decode as decode

    monkeypatch.setattr(bounded, "_abandoned", [])
    real = decode.load_image

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(decode, "load_image", slow)
    rows = "".join(json.dumps({"filename": f"{i % 4}.png", "caption": "a red square"}) + "\n" for i in range(12))
    (own / "slow.jsonl").write_text(rows)
    assert cli_main(["data", "check", str(own / "slow.jsonl"), "--root", str(own), "--timeout", "0.01",
                     "--threads", "6"]) == 1
    out, err = capsys.readouterr()
    assert err == "" and "timeout: 12" in out, (out, err)


def test_hung_reads_in_data_check_name_the_flag_not_resume(own, capsys, monkeypatch):
    import declip.data.bounded as bounded
    import declip.data.decode as decode

    monkeypatch.setattr(bounded, "_abandoned", [])
    monkeypatch.setattr(bounded, "STALL_GRACE_S", 0.2)
    hang = threading.Event()
    monkeypatch.setattr(decode, "load_image", lambda *a, **k: hang.wait())
    rows = "".join(json.dumps({"filename": f"{i % 4}.png", "caption": "a red square"}) + "\n" for i in range(12))
    (own / "hung.jsonl").write_text(rows)
    try:
        line = one_line(capsys, "data", "check", str(own / "hung.jsonl"), "--root", str(own), "--timeout", "0.05",
                        "--threads", "2", code=2)
    finally:
        hang.set()
    assert "file system looks hung" in line and "--timeout=0.05" in line and "--resume" not in line, line
    assert "check the mount, then run the check again" in line, line


def test_device_with_an_index_is_named_whole(tmp_path, capsys, monkeypatch):
    import declip.device as device

    monkeypatch.setattr(device, "device_count", lambda kind: 0)
    line = one_line(capsys, "train", *TINY, f"train.output_dir={tmp_path / 'run'}", "train.device=cuda:1", code=1)
    assert "train.device=cuda:1 but no CUDA device is available" in line, line


@pytest.mark.parametrize("command", ["show", "train"])
def test_device_gpu_is_a_config_error(tmp_path, capsys, command):
    argv = ["config", "show", "train.device=gpu"] if command == "show" else ["train", "train.device=gpu"]
    line = one_line(capsys, *argv, code=2)
    assert "train.device: 'gpu'" in line and "cuda" in line and "(an NVIDIA or AMD GPU: cuda)" in line, line
