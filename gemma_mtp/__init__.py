"""gemma-mtp: lossless speculative decoding for Gemma 4 with its Multi-Token-Prediction assistants."""
