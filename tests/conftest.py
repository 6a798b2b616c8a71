import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the suite may reach a model hub

from helpers import tiny_config  # noqa: E402  (tests/helpers.py: the one tiny config, the metrics readers)


@pytest.fixture
def tiny_cfg(tmp_path):
    """``tiny_cfg(*overrides, small=False)``: the tiny config (tests/helpers.py) writing to tmp_path/run."""

    def make(*overrides, small=False):
        return tiny_config(f"train.output_dir={tmp_path / 'run'}", *overrides, small=small)

    return make


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared 2-core machine, torch's default threads oversubscribe the CPU and a
    tiny step takes seconds instead of a tenth of one. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``accelerator`` skip cleanly on a machine without one (CI, laptops)."""
    import torch

    if torch.accelerator.current_accelerator(check_available=True) is None:
        skip = pytest.mark.skip(reason="no accelerator on this machine")
        for item in items:
            if "accelerator" in item.keywords:
                item.add_marker(skip)
