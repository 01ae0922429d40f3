"""The normalization family (being written)."""
__all__ = []
