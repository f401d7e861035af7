"""Planted regressions, for proving that the gates catch what they claim to catch.

Loaded only when ``ATTNBENCH_PLANT`` is set; the measuring path never imports this module otherwise.
A plant names a variant and what to do to it::

    ATTNBENCH_PLANT="slow:torch_softmax:0.15,extra_nxn:weights_only"

    slow:VARIANT:FRACTION   every timed call spends FRACTION × its own median more (GPU spin, or host
                            busy-wait on CPU)
    extra_nxn:VARIANT       the forward keeps one more n×n tensor for backward
    wrong:VARIANT:REL       the output (and so every gradient) is off by the relative error REL, what a
                            log-sum-exp off by REL does to a flash kernel
    broken:VARIANT:HOW      the output is all zeros (HOW = zeros) or all NaN (HOW = nan), its gradients with it
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

PLANT_ENV = "ATTNBENCH_PLANT"
FORMS = "slow:VARIANT:FRACTION, extra_nxn:VARIANT, wrong:VARIANT:REL or broken:VARIANT:zeros|nan"
#: what broken:VARIANT:HOW does to the output
BROKEN = {"zeros": 0.0, "nan": float("nan")}
#: the most a plant may add or get wrong: a slowdown of 100x its median, an output 100x off; past that a plant
#: only stalls the run (slow:...:1e308 would spin for ever)
MAX_AMOUNT = {"slow": 100.0, "wrong": 100.0}


@dataclass
class Plant:
    """What is planted in one variant."""

    slow: float = 0.0
    extra_nxn: bool = False
    wrong: float = 0.0
    broken: str = ""  # a key of BROKEN, or nothing

    def as_dict(self) -> dict:
        fields = (("slow", self.slow), ("extra_nxn", 1 if self.extra_nxn else 0), ("wrong", self.wrong),
                  ("broken", self.broken))
        return {k: v for k, v in fields if v}

    def wrap_attention(self, attention: Callable) -> Callable:
        """``attention`` with what is planted: an extra n×n tensor kept, a relative error in the output."""
        if not (self.extra_nxn or self.wrong or self.broken):
            return attention

        def planted(q, k, v):
            out = attention(q, k, v)
            if self.wrong:
                out = out * (1 + self.wrong)
            if self.broken:
                out = out * BROKEN[self.broken]  # through autograd: the gradients follow
            if self.extra_nxn:
                extra = torch.empty(q.shape[0], q.shape[1], q.shape[2], k.shape[2], device=q.device, dtype=q.dtype)
                out = _KeepExtraNxN.apply(out, extra)
            return out

        return planted

    def slow_target(self, target: Callable[[], object], median_s: Callable[[], float], device: str) -> Callable:
        """``target`` made slower by ``slow`` × its median (``median_s()`` measures it), when planted."""
        if not self.slow:
            return target
        extra_s = self.slow * median_s()

        def slowed():
            target()
            _burn(device, extra_s)

        return slowed


def parse_plants(text: str | None, variants=None) -> dict[str, Plant]:
    """``ATTNBENCH_PLANT`` -> {variant: Plant}; empty when unset; ValueError naming the forms otherwise, and naming
    the registered variants when one that is not among ``variants`` is planted (a typo would plant nothing)."""
    plants = _parse(text)
    unknown = sorted(set(plants) - set(variants)) if variants is not None else []
    if unknown:
        raise ValueError(f"{PLANT_ENV}: no variant named {', '.join(unknown)}; the variants: {', '.join(variants)}")
    return plants


def _parse(text: str | None) -> dict[str, Plant]:
    plants: dict[str, Plant] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        parts = item.split(":")
        if parts[0] in ("slow", "wrong") and len(parts) == 3:
            try:
                amount = float(parts[2])
            except ValueError:
                amount = float("nan")
            if not 0 < amount <= MAX_AMOUNT[parts[0]]:
                raise ValueError(f"{PLANT_ENV}: cannot parse {item!r}; {parts[0].upper()} amount must be a positive "
                                 f"number of at most {MAX_AMOUNT[parts[0]]:g}; expected {FORMS}")
            setattr(plants.setdefault(parts[1], Plant()), parts[0], amount)
        elif parts[0] == "broken" and len(parts) == 3:
            if parts[2] not in BROKEN:
                raise ValueError(f"{PLANT_ENV}: cannot parse {item!r}; HOW must be one of {', '.join(BROKEN)}; "
                                 f"expected {FORMS}")
            plants.setdefault(parts[1], Plant()).broken = parts[2]
        elif parts[0] == "extra_nxn" and len(parts) == 2:
            plants.setdefault(parts[1], Plant()).extra_nxn = True
        else:
            raise ValueError(f"{PLANT_ENV}: cannot parse {item!r}; expected {FORMS}")
    return plants


class _KeepExtraNxN(torch.autograd.Function):
    """Pass ``out`` through and keep ``extra`` for backward."""

    @staticmethod
    def forward(ctx, out, extra):
        ctx.save_for_backward(extra)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _burn(device: str, seconds: float) -> None:
    """Spend ``seconds`` more on the device (or the host, on CPU)."""
    if device == "cuda":
        from .timing import spin

        spin(seconds)
        return
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
