"""archbench: compare language-model architectures on quality and efficiency in the same run."""
__version__ = "0.1.0"
