"""float64 NumPy reference of the normalization family (being written)."""
