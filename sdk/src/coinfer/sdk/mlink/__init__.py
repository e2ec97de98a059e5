"""MLink: link black-box models' outputs, so executed models predict the ones not executed.

A link g_ij maps model i's output to model j's (:class:`Link`; vectors and sequences in
either role); an :class:`Ensemble` combines the links into one target from any subset of
executed sources; a :class:`LinkGraph` holds them all for a set of models; the planner
(:mod:`~coinfer.sdk.mlink.selection`) picks which models to run under a budget.
:mod:`coinfer.edge.mlink` serves it. PyTorch is imported only when links are built.

Example::

    from coinfer.sdk.mlink import LinkGraph, LinkOptions, OutputSpec, activation_scores, greedy_plan

    specs = {"faces": OutputSpec.classes(4), "speech": OutputSpec.presence(),
             "words": OutputSpec.sequence(max_length=8)}
    graph = LinkGraph.train(train_outputs, specs, LinkOptions(epochs=60))
    plan = greedy_plan(activation_scores(graph.link_performance(profile), costs), costs, budget=0.05)
    outputs = graph.predict({name: run_model(name, frame) for name in plan.active})
"""

from coinfer.sdk.mlink.ensemble import Ensemble
from coinfer.sdk.mlink.graph import LinkGraph
from coinfer.sdk.mlink.links import Endpoint, Link, LinkError, LinkOptions
from coinfer.sdk.mlink.metrics import performance, sample_performance, word_error_rates
from coinfer.sdk.mlink.outputs import OutputError, OutputSpec, Vocabulary
from coinfer.sdk.mlink.selection import (
    EVERY_STEP,
    ExecutionMode,
    ModePlan,
    Plan,
    PlanError,
    activation_scores,
    best_link_estimate,
    brute_force_plan,
    greedy_plan,
    mean_output_accuracy,
    mode_plan,
)

__all__ = [
    "EVERY_STEP",
    "Endpoint",
    "Ensemble",
    "ExecutionMode",
    "Link",
    "LinkError",
    "LinkGraph",
    "LinkOptions",
    "ModePlan",
    "OutputError",
    "OutputSpec",
    "Plan",
    "PlanError",
    "Vocabulary",
    "activation_scores",
    "best_link_estimate",
    "brute_force_plan",
    "greedy_plan",
    "mean_output_accuracy",
    "mode_plan",
    "performance",
    "sample_performance",
    "word_error_rates",
]
