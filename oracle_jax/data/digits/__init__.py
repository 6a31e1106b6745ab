"""The project's TFDS builder for scikit-learn's 8x8 digits (the offline default)."""
