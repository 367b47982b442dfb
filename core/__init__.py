"""The bottom layer: what training/, export/ and server/ all use, importing none of them.

codec.py       encoded bytes <-> RGB arrays (PNG, JPEG, WebP), resizing, the NCHW layout of the graphs
imageops.py    strength and colour preservation on float RGB arrays
repository.py  the model repository: layout, model.json schema, its reader and its writer
files.py       file digests (model graphs, loss-network weights)
cpu.py         the CPU's SIMD flags (int8 dot products), read at run time

Torch-free and gRPC-free: the API process, the queue worker, the job process,
the trainers and export all import it (tests/test_layers.py keeps it so).
"""
