"""Data files shipped with the package (the paper's figure values)."""
