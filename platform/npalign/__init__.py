"""npalign: few-shot steerable alignment with neural processes (arXiv 2412.13998).

Models and losses (`npalign.models`) are plain PyTorch; Ray and DeepSpeed live in `npalign.train`.
"""

__version__ = "0.1.0"
