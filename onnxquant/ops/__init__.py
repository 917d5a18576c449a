"""Which inputs of which op types are quantized, on which axis."""

# Ops whose input 1 is a learned weight and input 2 (except MatMul's) a bias.
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
