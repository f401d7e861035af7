"""Placeholder: the Triton FlashAttention-2 variant is being written (issue 5)."""
