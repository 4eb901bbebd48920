"""Evaluations of a finished scene against a reference: :mod:`.geometry` (``vid2scene eval-geometry``)."""
