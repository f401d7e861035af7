"""Shared test helpers: hypothesis profiles, devices, the tolerance rule."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci": bounded and deterministic enough for a 2-core runner; "dev": more examples locally.
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("gpu", max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))

# The tests check results, not speed: triton_flash takes the first candidate tile of each autotune key instead
# of compiling and timing every candidate (attention_impls.triton_flash.TUNE_ENV). Suite runs started by the
# tests inherit it; `pytest benchmarks` run by a user tunes as usual.
os.environ.setdefault("ATTNBENCH_TRITON_TUNE", "off")

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def available_devices() -> list[str]:
    """cpu always; cuda when a GPU is visible (probed at collection, never at import of the package)."""
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
