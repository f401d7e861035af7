"""The benchmark grid: cells, presets and the parsers behind the ``--attn-*`` options."""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass

import torch

from attention_impls.masks import parse_mask, visible_pairs

DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp64": torch.float64,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


#: the mask of a cell without one (its ``mask`` axis); causality is the ``causal`` axis.
NO_MASK = "none"
#: documents' lengths are drawn from this seed, so every run and variant sees the same documents.
DOCUMENT_SEED = 0


@dataclass(frozen=True)
class Preset:
    """A named grid. Each cell is (seq_len, batch, heads) × head_dim × dtype × heads_kv × mask label.

    A mask label (``masks.parse_mask``: "none", "causal", "causal sliding_window:1024", ...) gives both the
    cell's ``causal`` flag and its ``mask``; without ``masks`` the labels are the ``causal`` values.
    """

    seq_lens: tuple[int, ...]
    head_dims: tuple[int, ...]
    dtypes: tuple[str, ...]
    causal: tuple[bool, ...] = (False,)
    batch: int | None = None  # None: batch = tokens_per_batch // seq_len
    heads: int | None = None  # None: heads = model_dim // head_dim
    tokens_per_batch: int | None = None
    model_dim: int | None = None
    heads_kv: tuple[int, ...] | None = None  # None: heads_kv = heads (no GQA)
    masks: tuple[str, ...] | None = None  # None: "none"/"causal" from ``causal``
    variants: tuple[str, ...] | None = None  # None: every registered variant; --attn-variants names any

    def batch_for(self, seq_len: int) -> int:
        return self.batch if self.batch is not None else max(1, self.tokens_per_batch // seq_len)

    def heads_for(self, head_dim: int) -> int:
        return self.heads if self.heads is not None else max(1, self.model_dim // head_dim)

    def mask_labels(self) -> tuple[str, ...]:
        return self.masks if self.masks is not None else causal_labels(self.causal)

    def causal_values(self) -> tuple[bool, ...]:
        """The causal flags its cells take (what triton_flash's kernels are compiled for)."""
        return tuple(dict.fromkeys(split_mask_label(label)[0] for label in self.mask_labels()))


def causal_labels(causal: tuple[bool, ...]) -> tuple[str, ...]:
    """Mask labels of the plain causal flags: False -> "none", True -> "causal"."""
    return tuple("causal" if c else NO_MASK for c in causal)


def split_mask_label(label: str) -> tuple[bool, str]:
    """'causal sliding_window:1024' -> (True, 'sliding_window:1024'); 'causal' -> (True, 'none')."""
    words = str(label).split()
    causal = bool(words) and words[0] == "causal"
    rest = words[1:] if causal else words
    return causal, (rest[0] if rest else NO_MASK)


#: the variants of the seed study's grids: the compiled variants (flex, compiled) compile a graph per cell,
#: minutes over a whole grid, so they run in the flex preset or when --attn-variants names them.
CORE_VARIANTS = ("naive", "torch_softmax", "weights_only", "tiled", "sdpa_math", "sdpa_efficient", "sdpa_flash",
                 "sdpa_cudnn", "triton_flash")
PRESETS: dict[str, Preset] = {
    # The seed write-up's grid: fp32, batch 8, one head.
    "seed": Preset(seq_lens=(256, 1024, 4096, 8192, 16384), head_dims=(16, 32, 64, 128), dtypes=("fp32",),
                   causal=(False,), batch=8, heads=1, variants=CORE_VARIANTS),
    # Small enough to run every CPU variant in about a minute on 2 cores.
    "cpu-small": Preset(seq_lens=(128, 256, 512), head_dims=(16, 64), dtypes=("fp32",), causal=(False,),
                        batch=2, heads=2, variants=CORE_VARIANTS),
    # FlashAttention-2 paper shapes: batch × seq = 16384 tokens, heads × head_dim = 2048.
    "fa2-paper": Preset(seq_lens=(1024, 2048, 4096, 8192, 16384), head_dims=(64, 128), dtypes=("bf16",),
                        causal=(False, True), tokens_per_batch=16384, model_dim=2048, variants=CORE_VARIANTS),
    # Attention as models use it now: 16 query heads of 128, MHA and GQA (4 k/v heads), the masks of
    # current models; batch × seq = 16384 tokens.
    "flex": Preset(seq_lens=(1024, 2048, 4096, 8192, 16384), head_dims=(128,), dtypes=("bf16",),
                   tokens_per_batch=16384, heads=16, heads_kv=(16, 4),
                   masks=("none", "causal", "causal sliding_window:1024", "causal document:8", "prefix_lm:0.25"),
                   variants=("flex", "triton_flash", "sdpa_math", "sdpa_efficient", "sdpa_flash", "sdpa_cudnn")),
    # The fused kernels side by side where they compete: the FlashAttention papers' shapes from seq_len 4096, in
    # fp16 and bf16, head_dim 64 to 256 (4 to 32 heads of the 2048-wide model), causal and not.
    "flash-backends": Preset(seq_lens=(4096, 8192, 16384), head_dims=(64, 128, 256), dtypes=("fp16", "bf16"),
                             causal=(False, True), tokens_per_batch=16384, model_dim=2048,
                             variants=("triton_flash", "sdpa_flash", "sdpa_cudnn", "sdpa_efficient")),
}
DEFAULT_CUDA_PRESET = "seed"
DEFAULT_CPU_PRESET = "cpu-small"


#: the grid's axes: a cell's identity, and the plain-scalar parameters of every benchmark. ``heads_kv`` is
#: the number of k/v heads (== heads without GQA); ``mask`` a mask label without causality ("none",
#: "sliding_window:1024", "document:8", "prefix_lm:0.25"), AND-ed with ``causal``.
AXES: tuple[str, ...] = ("variant", "seq_len", "head_dim", "batch", "heads", "heads_kv", "dtype", "causal", "mask")
#: axes a run saved before masks and GQA lacks; a reader fills them with their defaults (``axis_defaults``).
LATER_AXES: tuple[str, ...] = ("heads_kv", "mask")


def axis_defaults(params: dict) -> dict:
    """``params`` with the LATER_AXES a run saved before them lacks: heads_kv = heads, mask "none"."""
    return {"heads_kv": params.get("heads"), "mask": NO_MASK, **{k: v for k, v in params.items() if v is not None}}


def cell_key(params: dict) -> str:
    """``Cell.key`` from a cell's axes (``Cell.params()``, a saved cell record or a benchmark's params).

    Heads_kv and the mask appear only when not the default, so a cell of the grids before them keeps its key.
    """
    params = axis_defaults(params)
    causal = "causal" if params["causal"] else "full"
    kv = f"-kv{params['heads_kv']}" if params["heads_kv"] != params["heads"] else ""
    mask = f"-{params['mask'].replace(':', '')}" if params["mask"] != NO_MASK else ""
    return (f"{params['variant']}-s{params['seq_len']}-d{params['head_dim']}-b{params['batch']}-h{params['heads']}"
            f"{kv}-{params['dtype']}-{causal}{mask}")


_CELL_KEY = re.compile(r"(?P<variant>[A-Za-z0-9_]+)-s(?P<seq_len>\d+)-d(?P<head_dim>\d+)-b(?P<batch>\d+)"
                       r"-h(?P<heads>\d+)(?:-kv(?P<heads_kv>\d+))?-(?P<dtype>[a-z0-9]+)-(?P<causal>full|causal)"
                       r"(?:-(?P<kind>sliding_window|document|prefix_lm)(?P<arg>[0-9.]+))?")


def parse_cell_key(key: str) -> dict:
    """A cell's axes from its key (``cell_key``'s inverse); ValueError for text that is not a cell key."""
    match = _CELL_KEY.fullmatch(key)
    if match is None or match["dtype"] not in DTYPES:
        raise ValueError(f"{key!r} is not a cell key (expected e.g. naive-s1024-d64-b8-h1-fp32-full)")
    fields = match.groupdict()
    params = {axis: int(fields[axis]) for axis in ("seq_len", "head_dim", "batch", "heads")}
    params["heads_kv"] = int(fields["heads_kv"]) if fields["heads_kv"] else params["heads"]
    mask = f"{fields['kind']}:{fields['arg']}" if fields["kind"] else NO_MASK
    return {"variant": fields["variant"], **params, "dtype": fields["dtype"], "causal": fields["causal"] == "causal",
            "mask": mask}


@dataclass(frozen=True)
class Cell:
    """One point of the grid for one variant."""

    variant: str
    seq_len: int
    head_dim: int
    batch: int
    heads: int
    dtype: str
    causal: bool
    device: str
    heads_kv: int | None = None  # None: heads (no GQA)
    mask: str = NO_MASK

    def __post_init__(self):
        if self.heads_kv is None:
            object.__setattr__(self, "heads_kv", self.heads)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def mask_spec(self):
        """The cell's mask as a spec of ``attention_impls.masks`` (None for "none")."""
        if self.mask == NO_MASK:
            return None
        return parse_mask(self.mask, self.seq_len, seed=DOCUMENT_SEED)[1]

    @property
    def mask_label(self) -> str:
        """The grid's label of the cell's masking: 'none', 'causal', 'causal sliding_window:1024', ..."""
        if self.mask == NO_MASK:
            return "causal" if self.causal else NO_MASK
        return f"causal {self.mask}" if self.causal else self.mask

    @property
    def key(self) -> str:
        """Stable, human-readable id (and pytest id): the same cell has the same key in every run."""
        return cell_key(self.params())

    @property
    def group(self) -> str:
        """pytest-benchmark group: every variant of one shape side by side."""
        mask = "causal" if self.causal else "full"
        kv = f" heads_kv={self.heads_kv}" if self.heads_kv != self.heads else ""
        extra = f" {self.mask}" if self.mask != NO_MASK else ""
        return (f"seq={self.seq_len} head_dim={self.head_dim} batch={self.batch} heads={self.heads}{kv} "
                f"{self.dtype} {mask}{extra}")

    def visible_pairs(self) -> int:
        """(query, key) pairs the cell's causal flag and mask let through (``masks.visible_pairs``)."""
        return visible_pairs(self.mask_spec(), self.seq_len, self.seq_len, causal=self.causal)

    def forward_flops(self) -> float:
        """4·B·H·D per visible (i, j) pair (two matmuls of 2·D each): only the work the mask lets through,
        S·(S+1)/2 pairs when causal, fewer with a window or documents. GQA does not change it."""
        return 4.0 * self.batch * self.heads * self.head_dim * self.visible_pairs()

    def backward_flops(self) -> float:
        """2.5× the forward: five matmuls against two (recomputation not counted)."""
        return 2.5 * self.forward_flops()

    def params(self) -> dict:
        """The cell's axes as plain scalars, in ``AXES`` order (what pytest-benchmark saves as ``params``)."""
        return {axis: getattr(self, axis) for axis in AXES}

    def flops(self, pass_name: str) -> float:
        """FLOPs of one ``forward`` or ``backward`` pass."""
        return self.forward_flops() if pass_name == "forward" else self.backward_flops()


# -- option parsers: small functions raising ArgumentTypeError that name the allowed values


def _items(text: str) -> list[str]:
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list, got an empty value")
    return items


def parse_positive_ints(text: str) -> tuple[int, ...]:
    """'256,1024' -> (256, 1024); every item a positive integer."""
    values = []
    for item in _items(text):
        try:
            value = int(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not an integer (expected e.g. 256,1024)") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{value} is not positive (expected integers >= 1)")
        values.append(value)
    return tuple(dict.fromkeys(values))


def parse_positive_int(text: str) -> int:
    """A single positive integer."""
    values = parse_positive_ints(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive integer, got {text!r}")
    return values[0]


def parse_dtypes(text: str) -> tuple[str, ...]:
    """'fp32,bf16' -> ('fp32', 'bf16'); allowed: fp16, bf16, fp32, fp64."""
    items = _items(text)
    for item in items:
        if item not in DTYPES:
            raise argparse.ArgumentTypeError(f"unknown dtype {item!r}; allowed: {', '.join(DTYPES)}")
    return tuple(dict.fromkeys(items))


_CAUSAL_WORDS = {"true": True, "causal": True, "1": True, "yes": True,
                 "false": False, "full": False, "0": False, "no": False}


def parse_causal(text: str) -> tuple[bool, ...]:
    """'false', 'true' or 'false,true' (also causal/full, yes/no, 1/0)."""
    values = []
    for item in _items(text):
        if item.lower() not in _CAUSAL_WORDS:
            raise argparse.ArgumentTypeError(f"{item!r} is not a causal flag; allowed: false, true "
                                             "(or both: false,true)")
        values.append(_CAUSAL_WORDS[item.lower()])
    return tuple(dict.fromkeys(values))


def parse_masks(text: str) -> tuple[str, ...]:
    """'none,causal,causal sliding_window:1024,document:8,prefix_lm:0.25': mask labels (masks.parse_mask)."""
    labels = []
    for item in _items(text):
        label = " ".join(item.split())
        try:
            parse_mask(label, seq_len=1 << 30)  # the form only; lengths are checked per cell
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        labels.append(label)
    return tuple(dict.fromkeys(labels))


def parse_variants(text: str) -> tuple[str, ...]:
    """'all' or a comma-separated list of registered variant names."""
    from attention_impls import VARIANTS

    if str(text).strip() == "all":
        return tuple(VARIANTS)
    items = _items(text)
    for item in items:
        if item not in VARIANTS:
            raise argparse.ArgumentTypeError(f"unknown variant {item!r}; allowed: all, {', '.join(VARIANTS)}")
    return tuple(dict.fromkeys(items))


def parse_preset(text: str) -> str:
    """A preset name: one of PRESETS."""
    if text not in PRESETS:
        raise argparse.ArgumentTypeError(f"unknown preset {text!r}; allowed: {', '.join(PRESETS)}")
    return text


def parse_device(text: str) -> str:
    """'auto' (cuda when available, else cpu), 'cuda' or 'cpu'."""
    if text not in ("auto", "cuda", "cpu"):
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; allowed: auto, cuda, cpu")
    return text


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '81920MiB' or a plain number of bytes."""
    units = {"tib": 2**40, "gib": 2**30, "mib": 2**20, "kib": 2**10, "tb": 10**12, "gb": 10**9, "mb": 10**6,
             "kb": 10**3, "b": 1}
    raw = str(text).strip().lower().replace(" ", "")
    for unit, factor in units.items():
        if raw.endswith(unit):
            number = raw[: -len(unit)]
            break
    else:
        number, factor = raw, 1
    try:
        value = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a memory size (expected e.g. 80GiB, 80GB, 81920MiB or bytes)"
        ) from None
    if not math.isfinite(value * factor) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive, finite memory size (expected e.g. 80GiB)")
    return int(value * factor)


def parse_percent(text: str) -> float:
    """'10' or '10%' -> 10.0 (a non-negative percentage)."""
    raw = str(text).strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a percentage (expected e.g. 5 or 5%)") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite percentage (expected e.g. 5 or 5%)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is negative (expected a percentage >= 0)")
    return value



def parse_factor(text: str) -> float:
    """'4' -> 4.0: a finite factor of at least 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a factor (expected a number >= 1, e.g. 4)") from None
    if not math.isfinite(value) or value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite factor >= 1 (e.g. 4)")
    return value

def support_reason(variant, cell: Cell) -> str | None:
    """Why ``variant`` cannot measure ``cell`` wherever it runs (a mask kind or GQA it does not do), or None."""
    return variant.support_reason(cell.mask_spec(), heads=cell.heads, heads_kv=cell.heads_kv)


def cell_reason(variant, cell: Cell) -> str | None:
    """Why ``variant`` cannot measure ``cell`` here: device, dtype, head_dim, mask or GQA; None when it can."""
    return (variant.unavailable_reason(cell.device, cell.torch_dtype) or variant.check_head_dim(cell.head_dim)
            or support_reason(variant, cell))


def expand(device: str, preset_name: str, *, variants: tuple[str, ...] | None = None,
           seq_lens: tuple[int, ...] | None = None, head_dims: tuple[int, ...] | None = None,
           batch: int | None = None, heads: int | None = None, dtypes: tuple[str, ...] | None = None,
           causal: tuple[bool, ...] | None = None, heads_kv: tuple[int, ...] | None = None,
           masks: tuple[str, ...] | None = None) -> tuple[list[Cell], dict[str, str]]:
    """The cells of a preset with some axes overridden, and why variants were left out.

    Without ``variants``, every variant of the preset (all registered ones where it names none) that can run on
    ``device`` in the dtype is taken and
    the others are left out with the reason (a variant that cannot do one mask or GQA is left out of those
    cells only, under "variant (mask label, heads_kv N)"); variants named explicitly are always kept (their
    benchmarks then skip with the reason). ``masks`` (labels) replaces ``causal``; giving both is a
    ValueError, as is a heads_kv that does not divide heads or a mask a sequence length cannot take.
    """
    from attention_impls import VARIANTS

    if masks is not None and causal is not None:
        raise ValueError("--attn-masks and --attn-causal both set the cells' causality: give one (a mask label "
                         "such as 'causal sliding_window:1024' carries its own)")
    preset = PRESETS[preset_name]
    labels = masks or (causal_labels(causal) if causal else preset.mask_labels())
    cells, left_out = [], {}
    for dtype in dtypes or preset.dtypes:
        for label in labels:
            is_causal, mask = split_mask_label(label)
            for seq_len in seq_lens or preset.seq_lens:
                if mask != NO_MASK:
                    try:
                        parse_mask(mask, seq_len, seed=DOCUMENT_SEED)
                    except ValueError as exc:
                        raise ValueError(f"mask {label!r} at seq_len {seq_len}: {exc}") from None
                for head_dim in head_dims or preset.head_dims:
                    n_heads = heads or preset.heads_for(head_dim)
                    for n_kv in heads_kv or preset.heads_kv or (n_heads,):
                        if n_heads % n_kv:
                            raise ValueError(f"heads_kv {n_kv} does not divide heads {n_heads}: each k/v head "
                                             "serves heads // heads_kv query heads")
                        for name in variants or tuple(VARIANTS):
                            if variants is None and preset.variants is not None and name not in preset.variants:
                                left_out.setdefault(name, f"not among the {preset_name} preset's variants (name it "
                                                          "with --attn-variants)")
                                continue
                            variant = VARIANTS[name]
                            cell = Cell(variant=name, seq_len=seq_len, head_dim=head_dim,
                                        batch=batch or preset.batch_for(seq_len), heads=n_heads, heads_kv=n_kv,
                                        dtype=dtype, causal=is_causal, mask=mask, device=device)
                            reason = (variant.unavailable_reason(device, DTYPES[dtype])
                                      or variant.check_head_dim(head_dim))
                            if not reason and device == "cpu" and variant.cpu_interpreted:
                                reason = ("runs in an interpreter on CPU: too slow to time (ask for it with "
                                          "--attn-variants)")
                            if reason and variants is None:
                                left_out.setdefault(name, reason)
                                continue
                            reason = support_reason(variant, cell)
                            if reason and variants is None:
                                kv = f", heads_kv {n_kv}" if n_kv != n_heads else ""
                                left_out.setdefault(f"{name} ({label}{kv})", reason)
                                continue
                            cells.append(cell)
    return cells, left_out
