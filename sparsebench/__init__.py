"""sparsebench: train with the pruning methods of Bartoldson et al. and measure what sparsity buys
at CPU inference."""

__version__ = "0.1.0"
