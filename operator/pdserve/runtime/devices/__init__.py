"""Choosing the torch device and dtype, and the device-specific kernels."""
