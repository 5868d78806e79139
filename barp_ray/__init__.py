"""barp-ray: preference-conditioned LLM routing (BaRP) on Ray."""

__version__ = "0.1.0"
