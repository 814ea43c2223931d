"""Offline testing kit: tiny but real Gemma 4 target + MTP assistant pairs, built in seconds."""
