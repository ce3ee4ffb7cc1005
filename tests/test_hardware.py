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


def test_cpu_peak_flops_from_the_flags_the_clock_and_the_cores():
    amx = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    # a 2-core 2.6 GHz Sapphire Rapids: AMX 1,024 bf16 FLOP/cycle/core, AVX-512 64 fp32 FLOP/cycle/core
    assert hardware.cpu_peak_flops(torch.bfloat16, flags=amx, ghz=2.6, cores=2) == pytest.approx(5.3248e12)
    assert hardware.cpu_peak_flops(torch.float32, flags=amx, ghz=2.6, cores=2) == pytest.approx(332.8e9)
    # without AMX, AVX512-BF16's dot products; without either, bf16 is emulated: no peak
    assert hardware.cpu_peak_flops(torch.bfloat16, flags={"avx512f", "avx512_bf16"}, ghz=2.0, cores=1) == 256e9
    assert hardware.cpu_peak_flops(torch.bfloat16, flags={"avx2"}, ghz=3.0, cores=4) is None
    assert hardware.cpu_peak_flops(torch.float32, flags={"avx2"}, ghz=3.0, cores=4) == pytest.approx(384e9)
    assert hardware.cpu_peak_flops(torch.float32, flags={"sse2"}, ghz=3.0, cores=4) is None
    assert hardware.cpu_peak_flops(torch.float32, flags={"avx2"}, ghz=0.0, cores=4) is None  # unknown clock


def test_peak_flops_on_this_cpu_is_the_cpu_peak():
    cpu = torch.device("cpu")
    flags, ghz = hardware.cpu_info()
    assert hardware.peak_flops(cpu, torch.bfloat16) == hardware.cpu_peak_flops(torch.bfloat16)
    if "avx512f" in flags and ghz:  # this machine: MFU is reported on the CPU too
        assert hardware.peak_flops(cpu, torch.float32) == pytest.approx(64 * ghz * 1e9 * torch.get_num_threads())
