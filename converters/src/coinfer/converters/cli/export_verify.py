"""``coinfer export verify``: check artifacts' manifests and file hashes; one line per artifact.

    coinfer export verify out/m-int8 out/net

Exits 1 when any artifact fails, after checking them all, with a one-line count on stderr.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("artifacts", type=Path, nargs="+", metavar="DIR")


def run(args: argparse.Namespace) -> int:
    return verify(args.artifacts)


def verify(paths: list[Path]) -> int:
    from coinfer.sdk.artifact import ArtifactError, load_artifact
    from coinfer.sdk.errors import CoinferError

    failures = 0
    for path in paths:
        try:
            artifact = load_artifact(path)
        except ArtifactError as error:
            failures += 1
            print(f"FAIL {error}")
            continue
        manifest = artifact.manifest
        summary = {"capability": manifest.capability, "kind": manifest.kind, "files": len(manifest.files)}
        print(f"ok   {path} {json.dumps(summary)}")
    if failures:
        raise CoinferError(f"{failures} of {len(paths)} artifact(s) failed verification (see above)")
    return 0
