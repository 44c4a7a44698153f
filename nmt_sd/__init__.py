"""nmt-sd: a fairseq-style Transformer NMT toolkit for self-distillation research."""

__version__ = "0.1.0"
