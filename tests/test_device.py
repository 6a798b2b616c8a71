"""One device resolution (declip.device): what `train.device` means on any machine, and the refusals."""
import pytest
import torch

import declip.device as device
from declip.errors import DeviceError


def test_cpu_and_auto_on_this_machine():
    assert device.resolve_device("cpu") == torch.device("cpu")
    want = torch.accelerator.current_accelerator(check_available=True)
    assert device.resolve_device("auto").type == (want.type if want is not None else "cpu")
    assert device.backend_for(torch.device("cpu")) == "gloo"
    assert device.backend_for(torch.device("cuda", 0)) == "nccl"


def test_missing_accelerator_and_too_many_ranks_are_refused(monkeypatch):
    monkeypatch.setattr(device, "device_count", lambda kind: 0)
    with pytest.raises(DeviceError, match="train.device=cuda but no CUDA device"):
        device.resolve_device("cuda")
    monkeypatch.setattr(device, "device_count", lambda kind: 1)
    with pytest.raises(DeviceError, match="2 processes on this node but only 1 cuda device"):
        device.resolve_device("cuda", local_rank=1, local_world_size=2)
    assert device.resolve_device("cuda", local_rank=0, local_world_size=1) == torch.device("cuda", 0)


def test_npu_without_torch_npu_is_one_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch_npu(name, *args, **kwargs):
        if name == "torch_npu":
            raise ImportError("No module named 'torch_npu'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch_npu)
    with pytest.raises(DeviceError, match="needs the torch_npu package"):
        device.resolve_device("npu")


@pytest.mark.accelerator
def test_auto_picks_the_accelerator_and_a_tiny_step_runs_there(tiny_cfg):
    from declip.train.trainer import train

    summary = train(tiny_cfg("train.device=auto", "train.steps=2", "eval.builtin=false"))
    assert summary["step"] == 2
