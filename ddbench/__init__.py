"""ddbench: a reproducible, Ray-scaled benchmark for dataset distillation.

Importing this package is cheap on purpose: torch, ray, mlflow, timm and diffusers are imported by
the modules that need them, so `ddbench validate` and `ddbench ls` start quickly.
"""

__version__ = "0.1.0"
