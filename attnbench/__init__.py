"""attnbench: the measuring instrument for ``attention_impls``.

It knows variants only through ``attention_impls.VARIANTS``.
"""

__version__ = "0.1.0"
