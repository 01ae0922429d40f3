"""The dropout family (being written)."""
__all__ = []
