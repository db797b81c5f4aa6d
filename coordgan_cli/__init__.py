"""coordgan: dense correspondence and label propagation with CoordGAN.

The Python API (``from coordgan_cli import label_folder, References, make_matcher``) lives in
``coordgan_cli.labelling``; it is imported on first use, so ``import coordgan_cli`` stays instant.
"""

__version__ = "0.1.0"

_API = ("References", "label_folder", "make_matcher", "register_matcher", "available_matchers", "Matcher",
        "MatcherBase", "Propagator")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from coordgan_cli import labelling

        return getattr(labelling, name)
    raise AttributeError(f"module 'coordgan_cli' has no attribute {name!r}")
