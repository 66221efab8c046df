"""From images to ranked lists: networks, descriptors, photographs found on pages, local
verification, search, the fitted pipeline and the saved index.

Imports the foundation and :mod:`cbir_utils.sources`.
"""
