"""linear: placeholder, filled in by its branch."""
