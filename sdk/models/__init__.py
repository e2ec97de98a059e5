"""Recipes for the real models that ship inside PyPI packages: where their files are, how
to prepare inputs and read outputs. Runtime-agnostic: they produce and consume numpy
arrays; :mod:`coinfer.device` runtimes execute them.
"""
