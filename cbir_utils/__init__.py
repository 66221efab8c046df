"""cbir_utils: near-duplicate retrieval of historical press photographs.

Shared code of the three notebooks (pretrained retrieval, fine-tuning, fine-tuned
retrieval) and of the ``python -m cbir_utils`` command line.
"""

__version__ = "0.1.0"
