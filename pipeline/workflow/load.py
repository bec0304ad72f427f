"""Workflow files: read a workflow YAML (duplicate keys refused) and validate it, every problem
named at once, with its line, in one ``WorkflowError``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline.workflow.jobs import cluster_kind
from pipeline.workflow.schema import DaskConfig, Workflow
from timesenclip.common.config_errors import problem_report
from timesenclip.common.errors import TimeSenCLIPError
from timesenclip.common.safe_yaml import parse_yaml


class WorkflowError(TimeSenCLIPError):
    """A workflow file that cannot be read or does not validate."""


def load_workflow(path: str | Path) -> Workflow:
    """Read and validate a workflow YAML file; any problem raises one ``WorkflowError``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise WorkflowError(
            f"workflow file {path} not found: check the path "
            "(the examples in workflows/ are a good start)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise WorkflowError(f"cannot read workflow file {path}: {exc}") from None
    data, node = parse_yaml(text, f"workflow file {path}", WorkflowError)
    workflow = _validate(data, path.parent, str(path), node)
    workflow._source = path.resolve()
    return workflow


def parse_workflow(
    data: Any, *, base_dir: str | Path = ".", source: str = "<workflow>"
) -> Workflow:
    """Validate an already-parsed workflow mapping; relative paths are read from ``base_dir``."""
    return _validate(data, Path(base_dir), source, None)


def _validate(data: Any, base_dir: Path, source: str, node: yaml.Node | None) -> Workflow:
    if not isinstance(data, dict):
        got = "nothing (the file is empty)" if data is None else f"a {type(data).__name__}"
        raise WorkflowError(
            f"workflow {source} must be a mapping of keys (name, year, regions, stac, model, "
            f"tasks, outputs, ...), got {got}"
        )
    try:
        return Workflow.model_validate(data, context={"base_dir": base_dir.resolve()})
    except ValidationError as exc:
        hint = f"Fix them, then check with: timesenclip validate {source}"
        raise WorkflowError(
            problem_report(exc, Workflow, node, f"workflow {source}", hint)
        ) from None


def with_cluster(workflow: Workflow, cluster: str) -> Workflow:
    """``workflow`` with its ``dask.cluster`` replaced (``run --cluster``), without the keys
    that apply only to the cluster it named (say, ``n_workers`` of a local one); checked as the
    workflow file would be, a problem raises one ``WorkflowError``."""
    foreign = DaskConfig.foreign_keys(cluster_kind(cluster))
    kept = workflow.dask.model_dump(exclude_unset=True)
    data = {**{k: v for k, v in kept.items() if k not in foreign}, "cluster": cluster}
    base_dir = workflow.source.parent if workflow.source else Path(".")
    try:
        dask = DaskConfig.model_validate(data, context={"base_dir": base_dir.resolve()})
    except ValidationError as exc:
        subject = f"--cluster {cluster} with the dask section of {workflow.source or 'a workflow'}"
        raise WorkflowError(problem_report(exc, DaskConfig, None, subject)) from None
    return workflow.model_copy(update={"dask": dask})
