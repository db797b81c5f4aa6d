"""coordgan: dense correspondence and label propagation with CoordGAN."""

__version__ = "0.1.0"
