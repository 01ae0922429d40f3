"""activation: placeholder, filled in by its branch."""
