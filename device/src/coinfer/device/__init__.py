"""coinfer.device: what runs on phones, Raspberry Pis and cameras.

Importing this package needs only numpy, :mod:`coinfer.sdk` and, when a model is run, a
TFLite interpreter (``ai_edge_litert``, else ``tflite_runtime``, else
``tensorflow.lite``). It never imports TensorFlow, PyTorch or transformers, so a
Raspberry Pi or Android build stays small; a test enforces this.
"""
