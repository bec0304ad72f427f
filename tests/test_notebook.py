"""``docs/notebooks/quickstart.ipynb`` runs end to end in a Jupyter kernel, offline, and shows a
land-cover map with its legend, a text query and the files ``to_cog`` wrote."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "docs" / "notebooks" / "quickstart.ipynb"

# Run after the notebook's own cells, in its namespace: what its map and files hold.
CHECK = """
import json
print(json.dumps({
    "legend": [t.get_text() for t in left.get_legend().get_texts()],
    "present": [names[v - 1] for v in present],
    "files": sorted(p.name for p in (folder / "maps").iterdir()),
    "similarity": float(cosine.min()), "similarity_max": float(cosine.max()),
}))
"""


def test_quickstart_runs_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the notebook writes its demo inputs
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells)  # kept without outputs
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK))
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp_path}}
    ).execute()  # raises on the first cell that fails
    outputs = [out for cell in notebook.cells for out in cell.get("outputs", [])]
    assert not [out for out in outputs if out.output_type == "error"]
    figures = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(figures) == 2  # the true-colour composite, the maps
    found = json.loads(notebook.cells[-1].outputs[0].text)
    assert found["legend"] == found["present"] and len(found["present"]) >= 2
    assert {"land_cover.tif", "land_cover.qml", "land_cover.json"} <= set(found["files"])
    assert -1.0 <= found["similarity"] < found["similarity_max"] <= 1.0
