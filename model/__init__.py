"""Golden NumPy model of the gradsync device: numerics, timing formulas, device and cluster."""
