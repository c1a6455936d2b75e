"""protpeft: parameter-efficient fine-tuning of ESM-2 protein language models."""

__version__ = "0.1.0"
__all__ = ["__version__"]
