"""Git edge: the only package that runs git.

Owns polling (``ls-remote``), fetching, materialising a tree at an exact SHA, credentials and
signature verification.
"""
