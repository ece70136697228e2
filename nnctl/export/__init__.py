"""Export trained models for use without nnctl: ONNX graphs (with their preprocessing) checked for parity.

`graph` holds the ONNX graph builder and the table of per-layer exporters, `layers` one
exporter per engine layer type, `onnx_model` the preprocessing/output head/metadata
around them, `parity` the onnxruntime check, and `api.export_model` the whole command.
Nothing here imports onnx or onnxruntime at import time: they are the optional `export`
extra, imported by the functions that use them.
"""
