"""The quickstart notebook executes end to end (slow tier)."""

import os

import pytest

from conftest import REPO, require


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
  nbformat = require("nbformat")
  nbclient = require("nbclient")
  nb = nbformat.read(os.path.join(REPO, "notebooks", "quickstart.ipynb"), as_version=4)
  monkeypatch.setenv("VLPT_NOTEBOOK_STEPS", "300")  # the kernel inherits this environment
  client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(REPO, "notebooks")}})
  client.execute()
  outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
  assert not [o for o in outputs if o.get("output_type") == "error"]
  images = [o for o in outputs if "image/png" in o.get("data", {})]
  assert len(images) == 2  # the curves and the retrieval grid
  results = next(o for o in nb.cells[2].outputs if o.get("output_type") == "execute_result")
  text = results["data"]["text/plain"]
  top1 = float(text.split("'heldout/zeroshot/top1': ")[1].split(",")[0].rstrip("}"))
  assert top1 > 0.3  # far above chance (1/24) after 300 steps
  hits = next(o for o in nb.cells[6].outputs if o.get("output_type") == "execute_result")
  print("zero-shot top-1", top1, "top-4 retrievals of the queried class", hits["data"]["text/plain"])
  assert float(hits["data"]["text/plain"]) > 0.25  # retrieved images of the queried class (1/24)
