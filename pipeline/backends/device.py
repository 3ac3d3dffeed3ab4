"""Device and precision for every torch model (SAM2, FFN, U-Net): one set of rules, one set of errors.

``device``: ``auto`` (the first CUDA device when torch sees one, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. ``precision``: ``auto`` (bf16 autocast on CUDA, fp32 on the CPU — on a CPU without native
bf16, autocast runs many times slower than fp32; measure before choosing it there), ``bf16`` or ``fp32``.
Importing this module imports no torch; the functions that need it import it when called.

>>> check_device("cuda:1"), check_precision("bf16")
('cuda:1', 'bf16')
>>> check_device("gpu")
Traceback (most recent call last):
...
ValueError: device must be auto, cpu, cuda or cuda:N, got 'gpu'
>>> resolve_precision("auto", "cpu"), resolve_precision("auto", "cuda:0")
('fp32', 'bf16')
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import Annotated, Any, Literal

from pydantic import AfterValidator

from emseg.pipeline.errors import ConfigError

DEVICES = "auto, cpu, cuda or cuda:N"
#: a config field holding a precision setting
Precision = Literal["auto", "bf16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp32")


def check_device(value: str) -> str:
    """Validate a device setting without torch (for config validators); raises ``ValueError``."""
    head, _, index = str(value).partition(":")
    if head not in ("auto", "cpu", "cuda") or (index and (head != "cuda" or not index.isdigit())):
        raise ValueError(f"device must be {DEVICES}, got {value!r}")
    return value


def check_precision(value: str) -> str:
    """Validate a precision setting without torch; raises ``ValueError``."""
    if value not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    return value


#: a config field holding a device setting, validated without torch
Device = Annotated[str, AfterValidator(lambda v: check_device(v))]


def resolve_device(device: str) -> str:
    """The device to run on, as torch names it (``cpu``, ``cuda``, ``cuda:N``).

    Raises :class:`ConfigError` for a CUDA device when this torch sees none (or not that many), and
    for a setting :func:`check_device` refuses.
    """
    try:
        check_device(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} was asked for, but this torch sees no CUDA device; "
                              "use device: auto or cpu")
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r} was asked for, but this torch sees "
                              f"{torch.cuda.device_count()} CUDA device(s); use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    return device


def resolve_precision(precision: str, device: str) -> str:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` elsewhere; raises :class:`ConfigError` for an unknown one."""
    try:
        check_precision(precision)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if precision == "auto":
        return "bf16" if str(device).startswith("cuda") else "fp32"
    return precision


def autocast(device: str, precision: str) -> AbstractContextManager[Any]:
    """bf16 autocast on ``device`` when ``precision`` resolves to bf16, else a no-op context."""
    if resolve_precision(precision, device) != "bf16":
        return nullcontext()
    import torch

    return torch.autocast(device_type=str(device).partition(":")[0], dtype=torch.bfloat16)


def describe(device: str) -> str:
    """The hardware in words, for logs, reports and model cards: the GPU's name, or the CPU's model,
    its bf16 instruction sets, cores and torch threads."""
    import os
    import platform

    import torch

    if str(device).startswith("cuda"):
        return f"GPU: {torch.cuda.get_device_name(torch.device(device))}"
    model, flags = platform.processor() or platform.machine(), []
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), model)
        flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    except OSError:
        pass
    extras = " ".join(f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags)
    return (f"CPU: {model}{f' ({extras})' if extras else ''}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} torch thread(s)")
