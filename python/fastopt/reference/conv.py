"""float64 NumPy reference of the conv family (being written)."""
