"""Where images come from: collections (folders, manifests, IIIF), their splits and
provenance, the demo, check and hard collections and the simulated printings and pages.

Imports only the foundation (``config``, ``errors``, ``io``, ``paths``).
"""
