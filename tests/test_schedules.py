"""Pipeline schedules on paper: generated GPipe, 1F1B and interleaved schedules respect the
dependencies, and their simulated bubbles equal the formulas."""
from __future__ import annotations

import pytest

from companion.parallel import (Op, bubble_fraction, gpipe_schedule, interleaved_bubble,
                                interleaved_schedule, measured_bubble, one_f_one_b_schedule,
                                peak_in_flight, simulate, zero_bubble_fraction)


def test_1f1b_two_stages_hand_worked():
    """p=2, m=3: stage 0 warms up with one forward; stage 1 alternates from the start."""
    s0, s1 = one_f_one_b_schedule(2, 3)
    assert s0 == [Op("F", 0), Op("F", 1), Op("B", 0), Op("F", 2), Op("B", 1), Op("B", 2)]
    assert s1 == [Op("F", 0), Op("B", 0), Op("F", 1), Op("B", 1), Op("F", 2), Op("B", 2)]


@pytest.mark.parametrize("make", [gpipe_schedule, one_f_one_b_schedule])
@pytest.mark.parametrize("p, m", [(1, 3), (2, 4), (3, 5), (4, 8), (4, 2), (8, 32)])
@pytest.mark.parametrize("t_b", [1.0, 2.0])
def test_simulated_bubble_equals_formula(make, p, m, t_b):
    events = simulate(make(p, m), t_f=1.0, t_b=t_b)
    assert len(events) == 2 * p * m
    assert measured_bubble(events) == pytest.approx(bubble_fraction(p, m))


@pytest.mark.parametrize("p, m, v", [(2, 4, 2), (4, 8, 2), (4, 4, 2), (4, 8, 3), (4, 16, 4)])
def test_interleaved_bubble_equals_formula(p, m, v):
    """Each chunk is 1/v of a stage, so its passes take 1/v of the time."""
    events = simulate(interleaved_schedule(p, m, v), t_f=1.0 / v, t_b=2.0 / v)
    bubble = measured_bubble(events)
    assert bubble == pytest.approx(interleaved_bubble(p, m, v))
    # Narayanan et al.'s form: bubble time over busy time is (p - 1) / (v m)
    assert bubble / (1 - bubble) == pytest.approx((p - 1) / (v * m))
    assert bubble < bubble_fraction(p, m)


def test_1f1b_holds_at_most_p_activations_where_gpipe_holds_m():
    p, m = 4, 16
    assert [peak_in_flight(ops) for ops in one_f_one_b_schedule(p, m)] == [4, 3, 2, 1]
    assert {peak_in_flight(ops) for ops in gpipe_schedule(p, m)} == {m}


def test_every_pass_appears_once_per_device_and_chunk():
    for ops in interleaved_schedule(4, 8, 2):
        assert sorted((o.kind, o.microbatch, o.chunk) for o in ops) == sorted(
            (k, i, c) for k in "FB" for i in range(8) for c in range(2))


def test_a_deadlocking_schedule_is_refused():
    bad = [[Op("B", 0), Op("F", 0)], [Op("F", 0), Op("B", 0)]]  # stage 0 waits for itself
    with pytest.raises(ValueError, match="deadlocks"):
        simulate(bad)


def test_zero_bubble_h1_is_a_third_of_1f1b_bubble_time():
    p, m = 8, 32
    zb, ofob = zero_bubble_fraction(p, m, "zb-h1"), zero_bubble_fraction(p, m, "1f1b")
    # in units of one pass (F = B = W), 1F1B idles 3(p - 1), ZB-H1 (p - 1), both over 3m busy
    assert zb / (1 - zb) == pytest.approx(ofob / (1 - ofob) / 3)
    assert zero_bubble_fraction(p, m, "zb-h2") == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: one_f_one_b_schedule(0, 4), "p=0"),
    (lambda: interleaved_schedule(4, 6, 2), "multiple of p"),
    (lambda: zero_bubble_fraction(4, 8, "zb-h3"), "variant"),
])
def test_bad_input_names_the_numbers(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_plot_schedules_titles_each_timeline_with_its_simulated_bubble():
    import matplotlib

    matplotlib.use("Agg")
    from companion.parallel import plot_schedules

    fig = plot_schedules({"1F1B": one_f_one_b_schedule(4, 8),
                          "interleaved": interleaved_schedule(4, 8, 2)})
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [f"1F1B: bubble {bubble_fraction(4, 8):.2f}",
                      f"interleaved: bubble {interleaved_bubble(4, 8, 2):.2f}"]
    assert len(fig.axes[0].patches) == 2 * 4 * 8  # one bar per pass
