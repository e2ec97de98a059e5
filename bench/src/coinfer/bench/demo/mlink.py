"""Stage ``mlink`` of ``coinfer demo``: links between real models, a plan and serving under a budget.

Why this shape: MLink's claim is that black-box models watching the same cameras say related
things, so under a budget the edge can run a few of them and predict the others' outputs from
theirs. The stage records what five real models of the zoo (:mod:`coinfer.edge.mlink.zoo`:
Haar faces and cats, HOG people, the PP-OCRv4 text detector, Silero VAD on the audio) output
on every step of the shared cameras (:func:`coinfer.edge.mlink.recording.record_outputs`, with
their measured costs), trains the links on blocks of time of every camera, then, on the
held-out blocks, plans which models to run at :data:`BUDGET` of the time of running all
(``coinfer mlink plan``'s greedy activation-score plan and its expected accuracy) and serves
the steps under that budget (``coinfer mlink run``'s loop, re-planned every period from
profiled steps): how accurate the served outputs are against each model's own, and the model
time saved. The crowd CNN and the OCR recogniser are left out of the zoo: the first needs
minutes of training, the second reads words the scenes' few signs rarely hold.

>>> ZOO
('faces', 'cats', 'people', 'text', 'speech')
"""

from __future__ import annotations

from typing import Any

import numpy as np

from coinfer.bench.demo.tour import Plot, StageResult, Tour, figure_png, new_figure

ZOO = ("faces", "cats", "people", "text", "speech")
#: The share of the time of running every model on every step that serving may spend.
BUDGET = 0.5
EPOCHS = 30
#: Time blocks (steps) of each camera, every SPLIT_EVERY-th held out for planning and serving.
SPLIT_BLOCK = 20
SPLIT_EVERY = 3
PERIOD = 40
PROFILE_FRACTION = 0.05


def run_mlink(tour: Tour) -> StageResult:
    """Record the zoo, train the links, plan and serve the held-out steps under the budget."""
    from coinfer.edge.mlink.recording import record_outputs
    from coinfer.edge.mlink.zoo import create_model
    from coinfer.sdk.mlink import LinkGraph, LinkOptions, activation_scores, greedy_plan, mean_output_accuracy
    from coinfer.sdk.mlink.serving import RecordedRunner, ServingOptions, serve
    from coinfer.sdk.mlink.table import costs_of
    from coinfer.sdk.splits import block_split

    scenes = tour.scenes()
    folder = tour.folder("mlink")
    tour.say(f"recording {len(ZOO)} real models on every step of the cameras")
    table = record_outputs(scenes, {name: create_model(name) for name in ZOO}, progress=False,
                           memory_cache=folder / "memory.json")
    table.save(folder / "outputs.npz")
    train = block_split(table.context["camera"], SPLIT_BLOCK, SPLIT_EVERY)
    tour.say(f"training {len(ZOO) * (len(ZOO) - 1)} links and {len(ZOO)} ensembles")
    graph = LinkGraph.train(table.take(train).outputs, table.specs, LinkOptions(epochs=EPOCHS, seed=0))
    graph.save(folder / "links", overwrite=True)
    held = table.take(~train)
    costs = {name: costs_of(held, "ms")[name] for name in graph.models}
    budget = BUDGET * sum(costs.values())
    link_scores = graph.link_performance(held.outputs)
    plan = greedy_plan(activation_scores(link_scores, costs), costs, budget)
    expected = mean_output_accuracy(plan.active, graph.models,
                                    lambda active: graph.ensemble_performance(held.outputs, active))
    tour.say("serving the held-out steps under the budget")
    runner = RecordedRunner(held)
    first = np.arange(max(1, PERIOD // 10))
    result = serve(graph, runner, len(held), ServingOptions(budget=budget, period=PERIOD,
                                                            profile_fraction=PROFILE_FRACTION),
                   profile=held.take(first))
    result.model_cost += sum(costs.values()) * first.size  # every model ran on the seed steps
    served = result.accuracy(held)
    achieved = float(np.mean(list(served.values())))
    time_saved = result.time_saved(costs)
    metrics = {
        "models": len(graph.models), "steps": len(table), "train_steps": int(train.sum()),
        "held_out_steps": len(held), "budget_fraction": BUDGET, "budget_ms_per_step": round(budget, 3),
        "all_models_ms_per_step": round(sum(costs.values()), 3),
        "plan": ", ".join(plan.active) or "nothing",
        "predicted": ", ".join(name for name in graph.models if name not in plan.active) or "nothing",
        "expected_accuracy": round(expected, 4), "achieved_accuracy": round(achieved, 4),
        "time_saved": round(time_saved, 4),
        "mean_link_performance": round(float(np.mean(list(link_scores.values()))), 4),
        **{f"runs.{name}": count for name, count in result.runs.items()},
        **{f"ms.{name}": round(value, 3) for name, value in costs.items()},
    }
    checks = {
        "the plan fits the budget": plan.cost <= budget,
        "serving saved model time": time_saved > 0,
        "some models were predicted, not run, on most steps": min(result.runs.values()) < len(held) / 2,
        "served outputs beat serving nothing for the models not run": all(
            served[name] >= _empty_accuracy(graph, held, name) for name in graph.models),
    }
    return StageResult(metrics, checks, [_accuracy_plot(served, result.runs, len(held)),
                                         _links_plot(graph.models, link_scores)])


def _empty_accuracy(graph: Any, table: Any, name: str) -> float:
    """A model's accuracy if nothing were served for it (its empty output on every step)."""
    from coinfer.sdk.mlink import performance
    from coinfer.sdk.mlink.serving import empty_outputs

    return performance(table.specs[name], empty_outputs(graph, name, len(table)), table.outputs[name])


def _accuracy_plot(served: dict[str, float], runs: dict[str, int], steps: int) -> Plot:
    figure, axis = new_figure()
    names = list(served)
    share = [runs[name] / steps for name in names]
    axis.bar(names, [served[name] for name in names], label="served accuracy")
    axis.plot(names, share, "ko", label="share of steps the model ran")
    axis.set(ylim=(0, 1.05), ylabel="fraction",
             title=f"mlink: accuracy per model at {BUDGET:.0%} of the time")
    axis.legend(loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=2)
    return Plot("served accuracy per model and how often it ran", figure_png(figure))


def _links_plot(models: list[str], scores: dict[tuple[str, str], float]) -> Plot:
    grid = np.full((len(models), len(models)), np.nan)
    for (source, target), value in scores.items():
        grid[models.index(source), models.index(target)] = value
    figure, axis = new_figure(5.0, 4.2)
    image = axis.imshow(grid, vmin=0, vmax=1, cmap="viridis")
    axis.set_xticks(range(len(models)), models, rotation=45)
    axis.set_yticks(range(len(models)), models)
    axis.set(xlabel="target", ylabel="source", title="mlink: link performance on held-out steps")
    figure.colorbar(image, ax=axis)
    return Plot("link performance, source -> target", figure_png(figure))
