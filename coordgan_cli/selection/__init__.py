"""Choosing which images to annotate: global descriptors (``descriptors``) and selection over them (``select``)."""
