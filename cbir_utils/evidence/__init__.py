"""From matches to evidence: duplicate groups, review verdicts, circulation timelines,
contact sheets, plots and maps of the collection.

Imports every layer below it; only the notebooks (:mod:`cbir_utils.runs`) and the
command line (:mod:`cbir_utils.cli`) import it.
"""
