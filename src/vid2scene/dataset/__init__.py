"""Datasets from many videos: sources, engines (local pool / Ray), the build, the index and the report.

See :mod:`vid2scene.dataset.build` for the dataset folder layout and the resume rules.
"""
