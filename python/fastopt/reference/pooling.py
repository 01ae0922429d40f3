"""pooling: placeholder, filled in by its branch."""
