"""The real models the edge runs, from files that ship inside PyPI packages: OpenCV's Haar
cascades and HOG people detector, the PP-OCRv4 text detector and recogniser, Silero VAD, and
the crowd CNN trained here. Each prepares its inputs and reads its outputs with numpy and
runs on onnxruntime or OpenCV, imported inside the functions that need them.
"""
