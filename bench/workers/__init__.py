"""Entry points of the worker processes that the bench starts for the compared systems."""
