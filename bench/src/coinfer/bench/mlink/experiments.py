"""The measurements of ``coinfer mlink bench``, each on a recorded output table.

Every function takes the real models' recorded outputs (:class:`OutputTable`) and returns
a JSON-ready dict; :mod:`coinfer.bench.mlink.bench` strings them together. Rows are time
steps; the split is in time within each camera (links learn from the past), and the
federated experiment splits by camera instead (an unseen group of cameras).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from coinfer.bench.mlink import baselines
from coinfer.sdk.mlink import Link, LinkGraph, LinkOptions, ModePlan, OutputSpec, Plan, performance
from coinfer.sdk.mlink.online import OnlineOptions, OnlineUpdater
from coinfer.sdk.mlink.reuse import ReuseCalibration
from coinfer.sdk.mlink.serving import FrameChanges, RecordedRunner, ServingOptions, serve
from coinfer.sdk.mlink.table import OutputTable, take_rows


def link_report(graph: LinkGraph, test: OutputTable) -> dict[str, Any]:
    """Every link's performance, and per target whether the ensemble of all other models
    beats its best single source."""
    scores = graph.link_performance(test.outputs)
    targets: dict[str, dict[str, Any]] = {}
    for target in graph.models:
        sources = [source for source in graph.models if (source, target) in graph.links]
        best_source = max(sources, key=lambda source: scores[(source, target)])
        ensemble = performance(test.specs[target], graph.ensembles[target].predict(
            {source: test.outputs[source] for source in sources}), test.outputs[target])
        targets[target] = {"ensemble": round(ensemble, 4), "best_source": best_source,
                           "best_single": round(scores[(best_source, target)], 4)}
    beats = sum(entry["ensemble"] > entry["best_single"] for entry in targets.values())
    return {"links": {f"{source}->{target}": round(value, 4) for (source, target), value in scores.items()},
            "ensembles": targets, "ensemble_beats_best_single": int(beats)}


def budget_report(graph: LinkGraph, profile: OutputTable, stream: OutputTable, thumbnails: np.ndarray,
                  calibration: ReuseCalibration, fraction: float, options: ServingOptions) -> dict[str, Any]:
    """MLink and the baselines at ``fraction`` of the time of running every model (which
    replaces ``options.budget``). MLink plans execution modes (every step, on frame change,
    or linked; ``calibration`` from training steps); ``links_only`` is the same serving
    loop choosing only run or link."""
    runner = RecordedRunner(stream)
    budget = fraction * sum(runner.costs.values())
    count = len(stream)
    seed = options.seed
    options = dataclasses.replace(options, budget=budget)
    changes = FrameChanges(thumbnails, np.asarray(stream.context["camera"]), calibration)
    mlink = serve(graph, runner, count, options, profile, changes)
    results = {
        "links_only": serve(graph, runner, count, options, profile),
        "standalone": baselines.standalone(graph, runner, count, budget),
        "reducto": baselines.reducto(graph, runner, thumbnails, stream.context["camera"], budget),
        "optimum": baselines.optimum(graph, runner, count, budget, stream),
    }
    randoms = [baselines.random_subset(graph, runner, count, budget, seed + k) for k in range(5)]
    accuracy = mlink.mean_accuracy(stream)
    out: dict[str, Any] = {
        "budget_fraction": fraction, "budget_ms": round(budget, 3),
        "all_models_ms": round(sum(runner.costs.values()), 3),
        "budget_accuracy": round(accuracy, 4),
        "budget_time_saved": round(mlink.time_saved(runner.costs), 4),
        "budget_per_model": {name: round(value, 4) for name, value in mlink.accuracy(stream).items()},
        "runs_per_model": {name: round(value / count, 3) for name, value in mlink.runs.items()},
        "plans": plan_counts(mlink.plans),
        "link_ms_per_step": round(1000 * mlink.link_seconds / count, 3),
        "baselines": {name: {"accuracy": round(result.mean_accuracy(stream), 4),
                             "time_saved": round(result.time_saved(runner.costs), 4),
                             "run": "; ".join(plan_counts(result.plans)) or "all, reused"}
                      for name, result in results.items()},
    }
    out["baselines"]["random"] = {
        "accuracy": round(float(np.mean([result.mean_accuracy(stream) for result in randoms])), 4),
        "time_saved": round(float(np.mean([result.time_saved(runner.costs) for result in randoms])), 4)}
    out["optimal_gap"] = round(out["baselines"]["optimum"]["accuracy"] - accuracy, 4)
    return out


def memory_report(graph: LinkGraph, profile: OutputTable, stream: OutputTable, fraction: float,
                  options: ServingOptions) -> dict[str, Any]:
    """MLink (run or link) and the baselines when the models kept loaded may take at most
    ``fraction`` of the peak memory of all models together. Frame-change modes save time,
    not memory, so they are not offered. Profiling runs each unloaded model briefly on ~1%
    of the steps, one at a time, so ``profiling_peak_mib`` adds the largest of those to the
    loaded set."""
    runner = RecordedRunner(stream, cost="mib")
    every = sum(runner.costs.values())
    budget = fraction * every
    count = len(stream)
    mlink = serve(graph, runner, count, dataclasses.replace(options, budget=budget, carry=False), profile)
    results = {"standalone": baselines.standalone(graph, runner, count, budget),
               "optimum": baselines.optimum(graph, runner, count, budget, stream)}
    randoms = [baselines.random_subset(graph, runner, count, budget, options.seed + k) for k in range(5)]
    loaded = [sum(runner.costs[name] for name in plan.active) for plan in mlink.plans]
    briefly = [max((runner.costs[name] for name in graph.models if name not in plan.active), default=0.0)
               for plan in mlink.plans]
    accuracy = mlink.mean_accuracy(stream)
    out: dict[str, Any] = {
        "budget_fraction": fraction, "budget_mib": round(budget, 1), "all_models_mib": round(every, 1),
        "accuracy": round(accuracy, 4),
        "loaded_peak_mib": round(max(loaded), 1),
        "memory_saved": round(1.0 - max(loaded) / every, 4),
        "profiling_peak_mib": round(max(low + high for low, high in zip(loaded, briefly, strict=True)), 1),
        "plans": plan_counts(mlink.plans),
        "baselines": {name: {"accuracy": round(result.mean_accuracy(stream), 4),
                             "run": "; ".join(plan_counts(result.plans))}
                      for name, result in results.items()},
    }
    out["baselines"]["random"] = {
        "accuracy": round(float(np.mean([result.mean_accuracy(stream) for result in randoms])), 4)}
    out["optimal_gap"] = round(out["baselines"]["optimum"]["accuracy"] - accuracy, 4)
    return out


def plan_counts(plans: list[Plan | ModePlan]) -> list[str]:
    """Each distinct plan as text, with how many periods used it, most used first."""
    counts: dict[str, int] = {}
    for plan in plans:
        if isinstance(plan, ModePlan):
            text = ", ".join(f"{name} ({mode.label})" for name, mode in plan.modes.items())
        else:
            text = ", ".join(plan.active)
        counts[text] = counts.get(text, 0) + 1
    return [f"{text} x{count}" if len(plans) > 1 else text
            for text, count in sorted(counts.items(), key=lambda item: -item[1])]


@dataclass(frozen=True)
class OnlineSetup:
    """A link kept up to date on a stream: ``labels`` target runs per ``period`` steps,
    ``epochs`` of fine-tuning after each, on at most ``replay`` labelled pairs."""

    source: str
    target: str
    period: int = 50
    labels: int = 5
    epochs: int = 10
    replay: int = OnlineOptions.replay


def online_report(offline: OutputTable, stream: OutputTable, drifted: np.ndarray, setup: OnlineSetup,
                  options: LinkOptions) -> dict[str, Any]:
    """Offline-init, periodic, uncertainty and loss-prediction accuracy of one link on a
    drifting stream. The link learns from every row of ``offline`` (the days before), then
    serves ``stream`` in clock order, the cameras interleaved; ``drifted`` marks the stream
    rows after the drift, which are also scored apart (``*_after_drift``). Every strategy
    starts from the same offline link with an empty replay buffer (after a drift the offline
    pairs teach the old relation) and labels the same number of steps per period."""
    spec: OutputSpec = stream.specs[setup.target]
    trained = Link.train(offline.specs[setup.source], spec, offline.outputs[setup.source],
                         offline.outputs[setup.target], options)
    weights = trained.weights()
    rows = np.argsort(stream.context["clock_hours"], kind="stable")
    after = np.asarray(drifted, bool)[rows]
    source = take_rows(stream.outputs[setup.source], rows)
    target = take_rows(stream.outputs[setup.target], rows)
    out: dict[str, Any] = {"source": setup.source, "target": setup.target, "offline_steps": len(offline),
                           "stream_steps": len(stream), "after_drift_steps": int(after.sum()),
                           "labels_per_period": setup.labels, "period": setup.period, "replay": setup.replay}
    for strategy, key in (("none", "offline_init"), ("periodic", "periodic"), ("uncertainty", "uncertainty"),
                          ("loss-prediction", "loss_prediction")):
        link = Link.create(trained.source, trained.target, options)
        link.set_weights(weights)
        updater = OnlineUpdater(link, OnlineOptions(strategy, setup.labels, setup.epochs, setup.replay,
                                                    options.seed))
        predicted = []
        for start in range(0, len(stream), setup.period):
            period = np.arange(start, min(start + setup.period, len(stream)))
            predicted.append(updater.step(take_rows(source, period), _labeller(target, period)))
        served = np.concatenate(predicted) if isinstance(predicted[0], np.ndarray) else list(
            itertools.chain.from_iterable(predicted))
        out[key] = round(performance(spec, served, target), 4)
        out[f"{key}_after_drift"] = round(performance(spec, take_rows(served, after),
                                                      take_rows(target, after)), 4)
        out[f"{key}_labelled"] = updater.labelled
    return out


def _labeller(target: Any, rows: np.ndarray) -> Callable[[np.ndarray], Any]:
    """An online updater's ``label``: the target's outputs at the picked ones of ``rows``."""
    return lambda picked: take_rows(target, rows[picked])


def domain_report(table: OutputTable, deployed: str, sources: list[str], truth: np.ndarray, classes: int,
                  label_fraction: float, options: LinkOptions, seed: int) -> dict[str, Any]:
    """Link deployed models to an abstract ground-truth node (the generator's truth) with a
    few labels. ``before``: the ``deployed`` classifier as it is (arg-max, capped at the
    last class); ``after_single``: its own link to the truth; ``after``: the ensemble of the
    links from every model in ``sources``. All scored on the unlabelled rest."""
    rng = np.random.default_rng(seed)
    labelled = np.zeros(len(table), bool)
    labelled[rng.choice(len(table), size=max(1, round(label_fraction * len(table))), replace=False)] = True
    wanted = np.eye(classes, dtype=np.float32)[truth]
    specs = {**{name: table.specs[name] for name in sources}, "truth": OutputSpec.classes(classes)}
    outputs = {**{name: table.outputs[name] for name in sources}, "truth": wanted}
    few = {name: take_rows(value, labelled) for name, value in outputs.items()}
    graph = LinkGraph.train(few, specs, options, pairs=[(name, "truth") for name in sources])
    rest = {name: take_rows(value, ~labelled) for name, value in outputs.items()}
    deployed_class = np.minimum(np.argmax(rest[deployed], axis=1), classes - 1)
    single = graph.links[(deployed, "truth")].predict(rest[deployed])
    ensemble = graph.ensembles["truth"].predict({name: rest[name] for name in sources})
    return {"deployed": deployed, "sources": sources, "labelled": int(labelled.sum()),
            "evaluated": int((~labelled).sum()),
            "before": round(float(np.mean(deployed_class == truth[~labelled])), 4),
            "after_single": round(performance(specs["truth"], single, rest["truth"]), 4),
            "after": round(performance(specs["truth"], ensemble, rest["truth"]), 4)}


def federated_report(table: OutputTable, models: list[str], groups: dict[str, np.ndarray], unseen: np.ndarray,
                     rounds: int, epochs: int, options: LinkOptions) -> dict[str, Any]:
    """Federated links over the real aggregation service on loopback, with its default
    (robust) aggregation: one edge client per camera group trains on its own steps each
    round; the global links are scored on a group of cameras none of them saw, against the
    untrained links they started from and against links one client trained alone for as
    many epochs."""
    import secrets
    import threading

    from coinfer.cloud.mlink.server import ClientRegistry, LinkAggregator, create_app
    from coinfer.edge.mlink.federated_client import FederatedClient
    from coinfer.sdk.service import ThreadedServer

    specs = {name: table.specs[name] for name in models}
    local = {name: {model: take_rows(table.outputs[model], rows) for model in models}
             for name, rows in groups.items()}
    held_out = {model: take_rows(table.outputs[model], unseen) for model in models}
    initial = LinkGraph.create(specs, options=options)
    before = float(np.mean(list(initial.link_performance(held_out).values())))
    alone = LinkGraph.create(specs, options=options)
    alone.fit(next(iter(local.values())), epochs=rounds * epochs)
    token = secrets.token_urlsafe(16)
    aggregator = LinkAggregator(initial, min_clients=len(groups), clients=ClientRegistry.shared(groups))
    results: dict[str, list[Any]] = {name: [] for name in groups}
    errors: list[BaseException] = []
    with ThreadedServer(create_app(aggregator, token), name="the MLink aggregator") as running:
        def edge(name: str) -> None:
            try:
                client = FederatedClient(running.url, token, name)
                graph = client.fetch_graph()
                for round_ in range(rounds):
                    results[name].append(client.train_round(graph, local[name], epochs=epochs))
                    client.wait_for_round(round_ + 1, timeout=600)
            except BaseException as error:  # re-raised below, in the caller's thread
                errors.append(error)

        threads = [threading.Thread(target=edge, args=(name,)) for name in groups]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        final = FederatedClient(running.url, token, "observer").fetch_graph()
    after = float(np.mean(list(final.link_performance(held_out).values())))
    sent = [result.bytes_sent for per_round in results.values() for result in per_round]
    received = [result.bytes_received for per_round in results.values() for result in per_round]
    return {"models": models, "clients": len(groups), "rounds": rounds, "epochs_per_round": epochs,
            "unseen_steps": int(unseen.size),
            "untrained_accuracy": round(before, 4), "global_accuracy": round(after, 4),
            "single_client_accuracy": round(float(np.mean(list(alone.link_performance(held_out).values()))),
                                            4),
            "bytes_per_round": int(sum(sent) + sum(received)) // rounds,
            "update_bytes_per_client": int(np.mean(sent)), "global_bytes_per_client": int(np.mean(received))}
