"""The bench's speech and text records, computed in a child process.

The MiniLM classifier runs on torch and the VAD on onnxruntime; loading torch and
TensorFlow (training, TFLite conversion) and LiteRT into one process crashed the bench
with a segmentation fault. So the records are built by ``python -m
coinfer.bench.infi.workloads`` and handed back as ``.npz`` files (loaded without pickle);
with ``--workdir`` they are kept and reused by later runs of the same configuration.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

from coinfer.sdk.npz import write_arrays


def records_paths(directory: Path, clips: int, messages: int, seed: int) -> dict[str, Path]:
    """Where one configuration's records live (the sizes and seed are in the names)."""
    return {"speech": directory / f"speech-{clips}-s{seed}.npz",
            "text": directory / f"text-{messages}-s{seed}.npz"}


def load_records(directory: Path, clips: int, messages: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    """The speech and text records, building the missing ones in a child process first."""
    paths = records_paths(directory, clips, messages, seed)
    if not all(path.exists() for path in paths.values()):
        command = [sys.executable, "-m", "coinfer.bench.infi.workloads", "--out", str(directory),
                   "--clips", str(clips), "--messages", str(messages), "--seed", str(seed)]
        subprocess.run(command, check=True)
    out = {}
    for name, path in paths.items():
        with np.load(path, allow_pickle=False) as archive:
            out[name] = {key: archive[key] for key in archive.files}
    return out


def main(argv: list[str] | None = None) -> int:
    from coinfer.bench.infi.tasks import speech_records, text_records

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--clips", type=int, required=True)
    parser.add_argument("--messages", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths = records_paths(args.out, args.clips, args.messages, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    if not paths["speech"].exists():
        write_arrays(paths["speech"], speech_records(args.clips, 1.0, args.seed))
    if not paths["text"].exists():
        write_arrays(paths["text"], text_records(args.messages, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
