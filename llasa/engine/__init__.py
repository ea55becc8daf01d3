"""Batched generation for the Llasa LM, and the streaming XCodec2 decoder (DESIGN.md section 7).

`types` is the seam every backend implements (`GenerationBackend`: submit -> `CodeStream`, cancel, shutdown);
`transformers_backend.TransformersEngine` is the embedded continuous-batching backend; `streaming` turns codes
into audio windows as they arrive. Importing this package loads no torch: import the submodules you need.
"""

from llasa.engine.types import CodeStream, FinishReason, GenerationBackend, SamplingParams

__all__ = ["CodeStream", "FinishReason", "GenerationBackend", "SamplingParams"]
