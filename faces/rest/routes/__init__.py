"""REST route groups, one Blueprint per module."""
