"""float64 NumPy reference of the dropout family (being written)."""
