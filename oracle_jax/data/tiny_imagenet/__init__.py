"""The project's TFDS builder for Tiny-ImageNet-200, read from the official zip."""
