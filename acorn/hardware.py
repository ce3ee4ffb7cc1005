"""The machine: which device, which number format, and how fast it could go.

One home for the questions every stage asks before it computes anything:
- `resolve_device("auto")`: CUDA (this process's LOCAL_RANK under torchrun),
  else Apple's MPS, else the CPU; any torch device string otherwise.
- `resolve_dtype(name, device)`: float32 / bfloat16 / float16 by name or alias,
  or "auto", the fastest format the device computes natively (bf16 on CUDA
  that has it and on CPUs with AMX or AVX512-BF16, float32 elsewhere).
- `flush_denormals(device)`: x86 CPUs slow down up to 30x on denormal floats;
  flushing them to zero changes nothing visible.
- `autocast(device, dtype)`: mixed precision for a 16-bit dtype, nothing for float32.
- `peak_flops(device, dtype)`: the dense tensor-core peak for MFU; None where unknown,
  rather than a figure against the wrong peak. On a CPU, `cpu_peak_flops`: the
  vector or matrix units' FLOP per cycle for the dtype (from the CPU's flags)
  x the clock x the cores torch computes on.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from acorn.errors import AcornError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

# Dense bf16/fp16 tensor-core peaks (FLOP/s) by GPU name, for MFU.
PEAK_FLOPS = {
    "H200": 989.4e12, "H100": 989.4e12, "GH200": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
    "A10": 125e12, "RTX 4090": 165.2e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def resolve_device(device="auto") -> torch.device:
    """None or "auto": the best device here (cuda:LOCAL_RANK, mps, cpu); else torch's own parse."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise AcornError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps") from None
    # Asked for a device this machine lacks: say so now, not in a traceback at the first tensor.
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise AcornError(f"device {device!r}: {why}; use --device cpu (or auto)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AcornError(f"device {device!r}: there are {torch.cuda.device_count()} CUDA devices "
                             f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}); pick one of them")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise AcornError(f"device {device!r}: Apple's MPS is not available here; use --device cpu (or auto)")
    return dev


def resolve_dtype(dtype, device: torch.device | None = None) -> torch.dtype:
    """A torch dtype or its name/alias ('bf16', 'torch.float16'); 'auto' picks the device's best."""
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES:
            raise AcornError(f"dtype {dtype} is not supported; use float32, bfloat16 or float16")
        return dtype
    if dtype == "auto":
        device = torch.device("cpu") if device is None else device
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if device.type == "cpu" and cpu_has_bf16() else torch.float32
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise AcornError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")


def cpu_has_bf16() -> bool:
    """AMX or AVX512-BF16: the CPU computes bf16 matmuls natively (1.4-2x here)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def flush_denormals(device: torch.device) -> None:
    if device.type == "cpu":
        torch.set_flush_denormal(True)


def autocast(device: torch.device, dtype: torch.dtype):
    """A fresh context manager: autocast to a 16-bit dtype, or nothing for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# Dense FLOP per cycle per core of x86 units, best first for each dtype: (cpu flag, FLOP/cycle).
# AMX's tile unit: 1,024 bf16 (or fp16) multiply-adds counted as 2 FLOP per 2 elements, i.e.
# 16x32 x 32x16 tiles at 16 cycles (Intel's figure: 1,024 FLOP/cycle/core). AVX-512: two 512-bit
# FMA ports x 16 fp32 lanes x 2 (multiply + add) = 64; VDPBF16PS / AVX512-FP16 twice that per port.
# AVX2 + FMA: two 256-bit ports x 8 lanes x 2 = 32. Server cores have two FMA ports; a client core
# with one reaches half, so these are upper bounds, as peaks are.
CPU_FLOP_PER_CYCLE = {
    torch.float32: (("avx512f", 64), ("avx2", 32)),
    torch.bfloat16: (("amx_bf16", 1024), ("avx512_bf16", 128)),
    torch.float16: (("amx_fp16", 1024), ("avx512_fp16", 128)),
}


def cpu_info() -> tuple[set[str], float | None]:
    """This CPU's feature flags and its clock in GHz (the maximum lscpu reports where it
    reports one, else /proc/cpuinfo's current "cpu MHz", which a VM pins to the nominal clock)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set(), None
    flags, mhz = set(), None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    try:  # the maximum (turbo) clock, where the kernel exposes it
        mhz = max(mhz or 0.0, int(Path("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").read_text()) / 1e3)
    except (OSError, ValueError):
        pass
    return flags, (mhz / 1e3 if mhz else None)


def cpu_peak_flops(dtype: torch.dtype, *, flags: set[str] | None = None, ghz: float | None = None,
                   cores: int | None = None) -> float | None:
    """The CPU's dense peak FLOP/s for `dtype`: FLOP per cycle of its best unit for the dtype
    (AMX tiles for bf16/fp16, AVX-512 or AVX2 FMAs for float32) x the clock x `cores` (default:
    the threads torch computes on, one per core). None where the flags show no unit for the
    dtype (bf16 without AMX or AVX512-BF16 is emulated: no meaningful peak) or the clock is
    unknown. Arguments left out are read from this machine."""
    if flags is None or ghz is None:
        own_flags, own_ghz = cpu_info()
        flags = own_flags if flags is None else flags
        ghz = own_ghz if ghz is None else ghz
    cores = torch.get_num_threads() if cores is None else cores
    per_cycle = next((n for flag, n in CPU_FLOP_PER_CYCLE.get(dtype, ()) if flag in flags), None)
    if per_cycle is None or not ghz or cores < 1:
        return None
    return per_cycle * ghz * 1e9 * cores


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    if device.type == "cpu":
        return cpu_peak_flops(dtype)
    if device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16):
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None
