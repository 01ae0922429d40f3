"""The conv family (being written)."""
__all__ = []
