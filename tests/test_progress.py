"""The progress policy of every long command (:mod:`fewlabels.progress`): a bar on a terminal, else a status line
at most every interval and a final one; nothing on other ranks, nothing on stdout."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

from fewlabels.engine.monitor import Monitor
from fewlabels.methods.scl.fewshot_eval import batched_logistic_regression, classifier_proba
from fewlabels.progress import INTERVAL_ENV, SWITCH_ENV, Progress, format_duration, status_interval, track


class FakeClock:
    """Seconds that the test sets."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _main_process(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", SWITCH_ENV, INTERVAL_ENV):
        monkeypatch.delenv(name, raising=False)


def test_status_lines_only_after_the_interval_and_always_a_final_line(capsys):
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress(5, "eval", "images", interval=30, stream=stream, clock=clock)
    assert progress.active and progress.bar is None
    clock.now += 10
    progress.update()  # 1/5 after 10 s: too soon
    assert stream.getvalue() == ""
    clock.now += 21
    progress.update()  # 2/5 after 31 s: 2/31 images/s, 3 left -> 46.5 s
    clock.now += 9
    progress.update()  # 3/5, 9 s after the last line
    clock.now += 21
    progress.update()  # 4/5 after 61 s, 30 s after the last line
    clock.now += 1
    progress.update()  # 5/5: the final line, however soon
    progress.close()
    assert stream.getvalue().splitlines() == [
        "eval: 2/5 images, 0.06 images/s, eta 0m46s",
        "eval: 4/5 images, 0.07 images/s, eta 0m15s",
        "eval: 5/5 images, 0.08 images/s, done in 1m02s",
    ]
    assert capsys.readouterr().out == ""  # never stdout


def test_a_short_loop_writes_only_its_final_line_and_counts_from_the_initial_value():
    clock, stream = FakeClock(), io.StringIO()
    with Progress(10, "train", "steps", initial=6, interval=30, stream=stream, clock=clock) as progress:
        progress.set_postfix("loss 0.5000")
        for step in (7, 8, 9):
            clock.now += 2
            progress.update_to(step)
        assert stream.getvalue() == ""
        assert progress.rate() == pytest.approx(0.5) and progress.eta() == pytest.approx(2.0)  # 3 steps in 6 s
        clock.now += 2
        progress.update_to(10)
        progress.update_to(10)  # the final line once
    assert stream.getvalue() == "train: 10/10 steps, loss 0.5000, 0.50 steps/s, done in 0m08s\n"


def test_a_loop_that_stops_short_ends_without_a_final_line():
    stream = io.StringIO()
    with pytest.raises(RuntimeError), Progress(4, "predict", "images", interval=30, stream=stream) as progress:
        progress.update()
        raise RuntimeError("unreadable image")
    assert stream.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    assert status_interval() == 30.0
    monkeypatch.setenv(INTERVAL_ENV, "0")
    stream = io.StringIO()
    assert list(track("abc", 3, "decoding images", "files", stream=stream)) == ["a", "b", "c"]
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [f"decoding images: {i}/3 files" for i in (1, 2, 3)]
    assert "eta" in lines[0] and "done in" in lines[2]
    monkeypatch.setenv(INTERVAL_ENV, "soon")
    with pytest.raises(ValueError, match=INTERVAL_ENV):
        status_interval()


def test_a_terminal_gets_a_bar_with_count_rate_and_eta(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    with Progress(4, "eval", "images", interval=0) as progress:
        assert progress.tty and progress.bar is not None
        progress.update(2)
        progress.bar.refresh()
        shown = terminal.getvalue()
    assert "eval" in shown and "2/4" in shown and "images/s" in shown and "<" in shown  # tqdm's [elapsed<eta]
    assert progress.lines == 0 and "eval: 2/4" not in shown  # no status lines on a terminal


@pytest.mark.parametrize("env", [{"RANK": "1"}, {SWITCH_ENV: "0"}, {SWITCH_ENV: "off"}])
def test_nothing_on_other_ranks_or_when_switched_off(monkeypatch, env):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for stream in (io.StringIO(), Terminal()):
        with Progress(2, "eval", "images", interval=0, stream=stream) as progress:
            progress.update(2)
        assert not progress.active and progress.bar is None and stream.getvalue() == ""


def test_nothing_for_an_empty_loop():
    stream = io.StringIO()
    assert list(track([], 0, "decoding images", "files", interval=0, stream=stream)) == []
    assert stream.getvalue() == ""


def test_format_duration():
    assert [format_duration(s) for s in (0, 59.9, 123, 3600 + 5 * 60 + 7)] == ["0m00s", "0m59s", "2m03s", "1h05m"]
    assert format_duration(float("inf")) == "?"


def test_training_status_uses_the_same_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(INTERVAL_ENV, "3600")
    monitor = Monitor(tmp_path, total_steps=4, start_step=0, active=True, tensorboard=False)
    for step in range(1, 5):
        monitor.progress(step, loss=1.0 / step, samples_per_s=64.0)
    monitor.close()
    quiet = Monitor(tmp_path, total_steps=4, start_step=0, active=False, tensorboard=False)  # a rank > 0
    quiet.progress(4, loss=0.25, samples_per_s=64.0)
    quiet.close()
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: 4/4 steps, loss 0.2500, 64.0 samples/s, ")
    assert "done in" in lines[0] and captured.out == ""


def test_episode_classifiers_report_every_episode_once():
    """The callback of the few-shot classifiers counts each episode once: solver chunks, scikit-learn, centroids."""
    gen = torch.Generator().manual_seed(0)
    xs = torch.nn.functional.normalize(torch.randn(5, 6, 8, generator=gen), dim=2)
    ys = torch.arange(3).repeat(2).expand(5, -1)
    xq = torch.randn(5, 4, 8, generator=gen)
    calls: list[int] = []
    whole = batched_logistic_regression(xs, ys, 3)
    chunked = batched_logistic_regression(xs, ys, 3, max_hessian_bytes=1, progress=calls.append)
    assert calls == [1, 1, 1, 1, 1]
    torch.testing.assert_close(chunked.weight, whole.weight)
    for options in ({}, {"exact": True}, {"classifier": "nc"}):
        done: list[int] = []
        proba = classifier_proba(xs, ys, xq, 3, progress=done.append, **options)  # type: ignore[arg-type]
        assert sum(done) == 5 and proba.shape == (5, 4, 3)
        np.testing.assert_allclose(proba.sum(dim=2).numpy(), 1.0, rtol=1e-6)


def test_text_batches_are_counted_in_examples(monkeypatch):
    """RelBitFit's evaluation and prediction loop (``logits_of``): one status line per batch, counted in texts, and
    the logits come back in input order."""
    from types import SimpleNamespace

    from fewlabels.methods.relbitfit.predict import logits_of

    monkeypatch.setenv(INTERVAL_ENV, "0")

    def model(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=attention_mask.sum(dim=1, keepdim=True).float())

    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    stream = io.StringIO()
    monkeypatch.setattr("sys.stderr", stream)
    logits = logits_of(model, {"input_ids": mask.clone(), "attention_mask": mask}, torch.device("cpu"), 2, "eval dev")
    assert logits[:, 0].tolist() == [3.0, 1.0, 4.0, 2.0, 1.0]
    assert [line.split(",")[0] for line in stream.getvalue().splitlines()] == [
        "eval dev: 2/5 texts",
        "eval dev: 4/5 texts",
        "eval dev: 5/5 texts",
    ]
