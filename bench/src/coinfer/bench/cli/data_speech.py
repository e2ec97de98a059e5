"""``coinfer data speech``: speech and noise-only audio clips with truth and real VAD results.

    coinfer data speech --out data/speech --clips 200 --seconds 2 --seed 0

Half the clips hold real synthesised speech (eSpeak NG) mixed over ambient noise, half
noise only; the real Silero VAD runs on each (:mod:`coinfer.bench.data.speech`).
"""

from __future__ import annotations

import argparse
import time

from coinfer.bench.data.speech import (
    DTYPES,
    NOISE_KINDS,
    SpeechOptions,
    generate_speech,
    parse_kinds,
    summary,
)
from coinfer.sdk.cli.flags import add_output, add_quiet, add_seed, check_output


def _range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected LOW,HIGH (two numbers), got {text!r}") from error
    return low, high


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = SpeechOptions()
    add_output(parser, "the speech set (a directory)")
    parser.add_argument("--clips", type=int, default=defaults.clips)
    parser.add_argument("--seconds", type=float, default=defaults.seconds, help="clip length")
    add_seed(parser, "the generator", default=defaults.seed)
    parser.add_argument("--sample-rate", type=int, default=defaults.sample_rate, choices=(8000, 16000))
    parser.add_argument("--snr", type=_range, default=defaults.snr_db, metavar="LOW,HIGH",
                        help="speech-to-noise ratio range in dB (default -5,20; write --snr=-5,20 "
                        "when LOW is negative)")
    parser.add_argument("--level", type=_range, default=defaults.level_dbfs, metavar="LOW,HIGH",
                        help="clip RMS level range in dBFS (default -45,-15)")
    parser.add_argument("--kinds", default=",".join(NOISE_KINDS),
                        help=f"comma-separated noise kinds, from {','.join(NOISE_KINDS)}")
    parser.add_argument("--dtype", default=defaults.dtype, choices=DTYPES, help="stored sample type")
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    """Generate the set and print a short table of what the VAD found."""
    check_output(args)
    from coinfer.sdk.cli.report import print_metrics

    options = SpeechOptions(clips=args.clips, seconds=args.seconds, seed=args.seed,
                            sample_rate=args.sample_rate, snr_db=args.snr, level_dbfs=args.level,
                            kinds=parse_kinds(args.kinds), dtype=args.dtype)
    start = time.perf_counter()
    speech_set = generate_speech(args.out, options, progress=not args.quiet, overwrite=args.overwrite)
    print_metrics("coinfer data speech", summary(speech_set, time.perf_counter() - start))
    return 0
