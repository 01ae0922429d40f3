"""linear: placeholder, filled in by its branch."""
__all__ = []
