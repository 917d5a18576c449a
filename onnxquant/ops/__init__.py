"""Which inputs of which op types are quantized, on which axis."""
