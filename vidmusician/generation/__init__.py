"""Sampling with a loaded model: guidance and token sampling, and the window loop
for music of any length."""
