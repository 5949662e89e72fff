"""vlpt-convert of a training run: the latest checkpoint, a step directory, or --step N."""

from vlpt.cli import convert
from vlpt.weights.formats import read_vlpt


def test_any_step_of_a_workdir_converts(reference_run, tmp_path, capsys):
  workdir = reference_run("short")  # (read only) checkpoints at steps 10 and 20
  assert convert.main([str(workdir / "checkpoints" / "10"), str(tmp_path / "dir10")]) == 0
  assert convert.main([str(workdir), str(tmp_path / "step10"), "--step", "10"]) == 0
  assert convert.main([str(workdir), str(tmp_path / "latest")]) == 0
  dir10, step10 = read_vlpt(str(tmp_path / "dir10")), read_vlpt(str(tmp_path / "step10"))
  latest = read_vlpt(str(tmp_path / "latest"))
  name = "image.positional_embedding"
  assert (dir10.params[name] == step10.params[name]).all()
  assert not (dir10.params[name] == latest.params[name]).all()  # steps 11-20 trained on
  capsys.readouterr()
  assert convert.main([str(workdir), str(tmp_path / "bad"), "--step", "15"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("vlpt-convert: error: ") and "no checkpoint of step 15; it has [10, 20]" in err
  assert not (tmp_path / "bad").exists()


def test_a_step_of_an_export_is_refused(tmp_path, capsys):
  from vlpt.config import load_config

  from e2e_utils import DEMO, export_random_model

  export_random_model(load_config(DEMO + ":tiny"), tmp_path / "export")
  assert convert.main([str(tmp_path / "export"), str(tmp_path / "out"), "--step", "3"]) == 2
  assert "a step applies to workdirs only" in capsys.readouterr().err
