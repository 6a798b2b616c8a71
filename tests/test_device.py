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


# --- issue 31: one device by index (train.device=cuda:N), checked on the CPU through the config/device layer --------
@pytest.mark.parametrize("spec", ["cuda:1", "npu:0", "xpu:3", "cuda", "cpu", "auto"])
def test_config_accepts_a_device_with_an_index(spec, tiny_cfg):
    assert tiny_cfg(f"train.device={spec}").train.device == spec


@pytest.mark.parametrize("spec", ["cuda:x", "auto:1", "cpu:0", ":1", "cuda:1:2", "cuda:-1"])
def test_config_refuses_a_malformed_device(spec, tiny_cfg):
    from declip.config import ConfigError

    with pytest.raises(ConfigError, match="train.device: .*cuda:1"):
        tiny_cfg(f"train.device={spec}")


def test_an_index_picks_that_device_in_a_single_process_run(monkeypatch):
    monkeypatch.setattr(device, "device_count", lambda kind: 2)
    assert device.resolve_device("cuda:1") == torch.device("cuda", 1)
    assert device.resolve_device("xpu:0") == torch.device("xpu", 0)
    with pytest.raises(DeviceError, match="cuda:2 but only 2 cuda device.*indices 0-1"):
        device.resolve_device("cuda:2")


def test_under_torchrun_the_local_rank_picks_and_an_index_is_a_config_error(monkeypatch):
    from declip.config import ConfigError

    monkeypatch.setattr(device, "device_count", lambda kind: 2)
    assert device.resolve_device("cuda", local_rank=1, local_world_size=2) == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match="names one device but 2 processes .*CUDA_VISIBLE_DEVICES"):
        device.resolve_device("cuda:1", local_rank=0, local_world_size=2)
    assert device.resolve_device("cuda:1", local_rank=0, local_world_size=1) == torch.device("cuda", 1)
