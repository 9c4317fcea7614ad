"""evolve: MMEvol-style evolution of multimodal instruction data against any OpenAI-compatible endpoint."""

__version__ = "0.1.0"
