"""loss: placeholder, filled in by its branch."""
