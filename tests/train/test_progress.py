"""The progress line times training steps only: compilation is not in the rate or the ETA."""

import math

import pytest

from vlpt.train import writers


def test_rate_and_eta_start_after_the_first_step(monkeypatch, capsys):
  clock = iter([0.0, 10.0, 12.0, 14.0])  # construct; first step done (10 s: compiling); two lines
  monkeypatch.setattr(writers.time, "perf_counter", lambda: next(clock))
  progress = writers.Progress(total_steps=20, batch_size=32, first_step=0)
  progress.started(1)
  assert progress.update(5, {"train/loss": 1.0}) == pytest.approx(4 * 32 / 2.0)  # steps 2..5
  line = capsys.readouterr().out
  assert "ETA 0:00:07" in line  # 15 steps x 0.5 s, not x (10 + 2) / 5 s
  assert progress.update(9, {"train/loss": 1.0}) == pytest.approx(4 * 32 / 2.0)


def test_a_line_of_the_first_step_alone_reports_its_time(monkeypatch, capsys):
  clock = iter([0.0, 8.5, 8.6])
  monkeypatch.setattr(writers.time, "perf_counter", lambda: next(clock))
  progress = writers.Progress(total_steps=20, batch_size=32, first_step=0)
  progress.started(1)
  assert math.isnan(progress.update(1, {"train/loss": 3.0}))
  assert "first step 8.5s (compilation included)" in capsys.readouterr().out


def test_checkpoint_and_evaluation_time_is_left_out_of_the_rate(monkeypatch, capsys):
  clock = iter([0.0, 10.0, 22.0, 40.0])  # construct; first step done; two lines
  monkeypatch.setattr(writers.time, "perf_counter", lambda: next(clock))
  progress = writers.Progress(total_steps=20, batch_size=32, first_step=0)
  progress.started(1)
  progress.exclude(10.0)  # e.g. an evaluation between steps 1 and 5
  assert progress.update(5, {"train/loss": 1.0}) == pytest.approx(4 * 32 / 2.0)  # 12 s - 10 s
  assert progress.update(9, {"train/loss": 1.0}) == pytest.approx(4 * 32 / 18.0)  # reset per line
