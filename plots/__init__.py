"""Plotting code: each module draws one figure with matplotlib (no display needed)."""
