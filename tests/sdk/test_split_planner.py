"""The split planner: the least-cost option for a link, and re-planning that does not flap."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coinfer.sdk.errors import InvalidArgumentError
from coinfer.sdk.split.planner import Link, Option, Replanner, Weights, cut_options, evaluate, plan

options_strategy = st.lists(
    st.builds(Option, st.integers(0, 50), st.sampled_from(["float32", "float16", "int8", "jpeg"]),
              st.floats(0, 500), st.floats(0, 500), st.integers(0, 10**7)), min_size=1, max_size=20)
links = st.builds(Link, st.floats(0.01, 10_000), st.floats(0, 500))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(options_strategy, links, st.floats(0, 10), st.floats(0, 10), st.floats(0, 100))
def test_the_plan_is_the_least_cost_option(options, link, device_weight, edge_weight, queue):
    weights = Weights(device_weight, edge_weight)
    chosen = plan(options, link, weights, queue)
    costs = [evaluate(option, link, weights, queue).cost for option in options]
    assert chosen.cost == min(costs)
    assert chosen.total_ms == pytest.approx(chosen.device_ms + chosen.transfer_ms + chosen.edge_ms)


def _efficientnet_like_options():
    """EfficientNet-Lite0's real cut bytes (tests/sdk/test_split_graph.py measures them), with a
    device 4x slower than the edge and work spread evenly over the nodes."""
    from coinfer.sdk.split.graph import Cut

    rng = np.random.default_rng(0)
    sizes = [602_112, *rng.integers(100_000, 800_000, 30), 5_120, 4_000]
    cuts = [Cut(frozenset(range(i)), (f"t{i}",), (size // 4,), (4,), (True,)) for i, size in enumerate(sizes)]
    share = np.linspace(0, 1, len(cuts))
    return cut_options(cuts, device_ms=120 * share, edge_ms=30 * (1 - share))


def test_the_cut_moves_to_the_edge_as_bandwidth_grows():
    options = _efficientnet_like_options()
    sweep = [plan(options, Link(bandwidth, rtt_ms=10)) for bandwidth in (0.5, 2, 10, 50, 1000)]
    sent = [chosen.option.nbytes for chosen in sweep]
    assert sent == sorted(sent)  # more bandwidth, more bytes worth sending
    assert sweep[0].option.nbytes <= 5_120  # a slow link: the pooled features or the result
    assert sweep[-1].option.cut == 0 and sweep[-1].option.encoding == "int8"


def test_weights_and_queueing_move_work_between_tiers():
    options = [Option("edge", "jpeg", 1, 20, 30_000), Option("device", "float32", 60, 0, 4_000)]
    link = Link(20, 5)
    assert plan(options, link).option.cut == "edge"
    assert plan(options, link, edge_queue_ms=100).option.cut == "device"   # a busy edge server
    assert plan(options, link, Weights(device=0.1)).option.cut == "device"  # energy is cheap
    assert plan(options, link, Weights(edge=5)).option.cut == "device"


def test_replanning_follows_a_lasting_change_but_not_noise():
    options = [Option("a", "raw", 1, 2, 100_000), Option("b", "raw", 10, 1, 10_000)]
    # Break-even is near 11 Mbit/s: noise of +-30% around it must not make the plan flap.
    noisy = Replanner(options, Link(11, 5))
    rng = np.random.default_rng(1)
    for bandwidth in 11 * rng.uniform(0.7, 1.3, 200):
        noisy.observe(bandwidth_mbps=float(bandwidth))
    assert noisy.switches <= 1
    lasting = Replanner(options, Link(100, 5))
    assert [lasting.observe(bandwidth_mbps=2).option.cut for _ in range(6)][-1] == "b"
    assert lasting.switches == 1
    assert [lasting.observe(bandwidth_mbps=200).option.cut for _ in range(8)][-1] == "a"
    assert lasting.switches == 2


def test_bad_plans_are_refused():
    with pytest.raises(InvalidArgumentError, match="bandwidth > 0"):
        Link(0)
    with pytest.raises(InvalidArgumentError, match="no options"):
        plan([], Link(1))
    with pytest.raises(InvalidArgumentError, match=">= 0"):
        Option("x", "raw", -1, 0, 0)
    with pytest.raises(InvalidArgumentError, match="margin"):
        Replanner([Option("x", "raw", 1, 1, 1)], Link(1), margin=1.5)
    with pytest.raises(InvalidArgumentError, match="2 cuts but 1 device"):
        cut_options([None, None], [1.0], [1.0, 2.0])
