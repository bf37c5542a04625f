"""prpo."""
