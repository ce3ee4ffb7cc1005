"""acorn/hardware.py: the one place that resolves devices and dtypes."""

import pytest
import torch

from acorn import hardware
from acorn.errors import AcornError


@pytest.mark.parametrize("name, dtype", [("float32", torch.float32), ("fp32", torch.float32), ("bf16", torch.bfloat16),
                                         ("torch.float16", torch.float16), ("half", torch.float16),
                                         (torch.bfloat16, torch.bfloat16)])
def test_dtype_names_and_aliases(name, dtype):
    assert hardware.resolve_dtype(name) is dtype


def test_auto_dtype_follows_what_the_cpu_computes_natively():
    expected = torch.bfloat16 if hardware.cpu_has_bf16() else torch.float32
    assert hardware.resolve_dtype("auto", torch.device("cpu")) is expected


@pytest.mark.parametrize("bad", ["float8", "int8", torch.int64, 3])
def test_unknown_dtypes_are_one_clear_error(bad):
    with pytest.raises(AcornError, match="float32, bfloat16 or float16"):
        hardware.resolve_dtype(bad)


def test_devices():
    assert hardware.resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert hardware.resolve_device("auto").type in ("cpu", "mps")
    with pytest.raises(AcornError, match="unknown device"):
        hardware.resolve_device("tpu:banana")


def test_autocast_casts_only_for_16_bit_dtypes():
    a = torch.randn(4, 4)
    cpu = torch.device("cpu")
    with hardware.autocast(cpu, torch.bfloat16):
        assert (a @ a).dtype == torch.bfloat16
    with hardware.autocast(cpu, torch.float32):
        assert (a @ a).dtype == torch.float32


def test_no_peak_flops_for_a_cpu_or_float32():
    assert hardware.peak_flops(torch.device("cpu"), torch.bfloat16) is None
