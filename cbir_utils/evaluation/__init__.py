"""How good a ranking is: metrics and the evaluation protocols (study, scene-disjoint).

Imports the foundation, :mod:`cbir_utils.sources` and :mod:`cbir_utils.engine`.
"""
