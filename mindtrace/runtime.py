"""The serving runtime: ONNX Runtime running the exported classifier graph, with no PyTorch in the process.

The graph (``mindtrace.models.net.PixelClassifier``, exported at import into the BentoML store) takes uint8
pixels ``[n, 28, 28]`` and returns probabilities ``[n, 10]``: normalisation and softmax are inside it. Chosen
over eager PyTorch by measurement (DESIGN.md): about twice as fast per small batch, and a worker without
torch holds about 180 MB less.

>>> from mindtrace.models.net import MLPNet, onnx_bytes      # doctest: +SKIP
>>> classify = OnnxClassifier(onnx_bytes(MLPNet([784, 16, 10])))   # doctest: +SKIP
>>> classify(np.zeros((2, 28, 28), np.uint8)).shape          # doctest: +SKIP
(2, 10)
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

# Images per ONNX Runtime call: bounds the memory of one call however many images it is given. Measured
# (2026-11-29, calls of 16,384 images, as 64 batched requests of 256 make): 256 a chunk is as fast per image
# as 4096 or a little faster (its activations stay in cache), and leaves the process 124 MB rather than 173.
CHUNK = 256


class OnnxClassifier:
    """Probabilities ``[n, 10]`` (float32) for uint8 pixels ``[n, 28, 28]``, from an ONNX model's bytes.

    One intra-op thread and sequential execution: a worker is one process per core, and a model this small
    gains nothing from threads that would only compete with the other workers.
    """

    def __init__(self, model: bytes):
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3  # errors only: ORT warns about unused initializers at load
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        parts = [
            self.session.run(None, {self.input: pixels[i : i + CHUNK]})[0]
            for i in range(0, len(pixels), CHUNK)
        ]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
