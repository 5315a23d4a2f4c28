"""Performance machinery behind the layers of :mod:`redifu.nn`, kept apart so that the layer
files read as their equations.

* :mod:`~redifu.nn.kernels.attention`: key-padding-masked attention (PyTorch's fused kernel, or
  a chunked one with attention dropout on the CPU) and the one-mask pair of the differential
  attention;
* :mod:`~redifu.nn.kernels.dropout_masks`: the opt-in fast CPU dropout mask and bit packing;
* :mod:`~redifu.nn.kernels.relational`: the relational graph attention's per-pair values, fused
  softmax and weighted sum, and its kept per-relation projections;
* :mod:`~redifu.nn.kernels.checkpointing`: opt-in activation checkpointing of a layer.

Each kernel's docstring gives the figure of docs/BENCHMARKS.md that justifies it, or says that
the suite has none. Every kernel computes what the layer's equation says, within float
rounding: tests compare each with a plain implementation.
"""
