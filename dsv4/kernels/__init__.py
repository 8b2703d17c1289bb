"""Kernels on plain arrays (no modules, configs or meshes), below both dsv4.model and dsv4.parallel."""
