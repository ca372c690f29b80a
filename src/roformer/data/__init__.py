"""Data: the registry of real data sets, corpus loaders and tokenizers."""

from .registry import REGISTRY, DataUnavailable, available, get, resolve

__all__ = ["REGISTRY", "DataUnavailable", "available", "get", "resolve"]
