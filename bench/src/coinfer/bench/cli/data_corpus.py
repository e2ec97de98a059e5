"""``coinfer data corpus``: short text messages with zero-shot topic classifier results and truth.

    coinfer data corpus --out data/corpus --messages 1000 --seed 0

Short English messages over eight topics (plus chatter and mixed messages), each classified
by the real MiniLM-L6 zero-shot topic classifier (:mod:`coinfer.bench.data.corpus`).
"""

from __future__ import annotations

import argparse
import time

from coinfer.bench.data.corpus import KINDS, CorpusOptions, generate_corpus
from coinfer.bench.models.topics import TopicClassifier, TopicClassifierOptions
from coinfer.sdk.cli.flags import add_output, add_quiet, add_seed, check_output


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_output(parser, "the corpus (a directory)")
    parser.add_argument("--messages", type=int, default=1000)
    add_seed(parser, "the generator")
    parser.add_argument("--mixed", type=float, default=0.15, help="share of two-topic messages")
    parser.add_argument("--chatter", type=float, default=0.1, help="share of off-topic messages")
    parser.add_argument("--typo-rate", type=float, default=0.02, help="typo probability per word")
    parser.add_argument("--temperature", type=float, default=TopicClassifierOptions.temperature,
                        help="softmax temperature of the classifier")
    parser.add_argument("--batch-size", type=int, default=TopicClassifierOptions.batch_size)
    add_quiet(parser)


def run(args: argparse.Namespace) -> int:
    from coinfer.sdk.cli.report import print_metrics

    options = CorpusOptions(messages=args.messages, seed=args.seed, mixed=args.mixed, chatter=args.chatter,
                            typo_rate=args.typo_rate)
    classifier_options = TopicClassifierOptions(temperature=args.temperature, batch_size=args.batch_size)
    check_output(args)  # before spending seconds on loading the model
    start = time.perf_counter()
    corpus = generate_corpus(args.out, options, classifier=TopicClassifier(options=classifier_options),
                             progress=not args.quiet, overwrite=args.overwrite)
    metrics = corpus.index["metrics"]
    kinds = [m.kind for m in corpus.messages]
    table: dict[str, object] = {
        "directory": str(args.out),
        "messages (topical / mixed / chatter)": " / ".join(str(kinds.count(k)) for k in KINDS),
        "seconds": round(time.perf_counter() - start, 2),
        "accuracy, topical": metrics["accuracy_topical"],
        "accuracy, mixed (either topic)": metrics["accuracy_mixed_either"],
        "confidence mean": metrics["confidence_mean"],
        "confidence p10 / p50 / p90": " / ".join(
            str(metrics["confidence_quantiles"][q]) for q in ("p10", "p50", "p90")),
        "confidence < 0.5": metrics["confidence_below_0.5"],
    }
    print_metrics("coinfer data corpus", table)
    return 0
