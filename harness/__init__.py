"""Benchmark harness for context distillation (distribution `context-distill-harness`, import name `harness`)."""

__version__ = "0.1.0"
