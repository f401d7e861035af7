"""Attention variants behind one registry and one signature (see ``registry``)."""

# Each module registers its variant on import; this order is the order of VARIANTS and of every table.
from . import naive  # noqa: F401, I001
from . import torch_softmax  # noqa: F401
from . import weights_only  # noqa: F401
from . import tiled  # noqa: F401
from . import sdpa  # noqa: F401
from . import compiled  # noqa: F401
from . import flex  # noqa: F401
from .reference import reference
from .registry import FLOAT_DTYPES, VARIANTS, Variant, get_variant, register, softmax_scale, validate_inputs
from .tiled import DEFAULT_BLOCK_SIZE, tiled_attention

from . import triton_flash  # noqa: F401  (imports without Triton; probes it lazily)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "FLOAT_DTYPES",
    "VARIANTS",
    "Variant",
    "get_variant",
    "reference",
    "register",
    "softmax_scale",
    "tiled_attention",
    "validate_inputs",
]
