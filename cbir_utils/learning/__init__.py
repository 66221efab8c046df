"""Fine-tuning: the study's recipe end to end, and the trained head on a frozen trunk.

Imports the foundation, :mod:`cbir_utils.sources`, :mod:`cbir_utils.engine` and
:mod:`cbir_utils.evaluation`.
"""
