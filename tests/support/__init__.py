"""Oracles and helpers the tests share: closed forms, forward passes written in NumPy,
networks trained by hand, benchmark loaders."""
