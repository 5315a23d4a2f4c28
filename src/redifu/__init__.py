"""redifu: multimodal conversation emotion recognition with the ReDiFu model."""

__version__ = "0.1.0"
