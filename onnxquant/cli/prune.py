"""``onnxquant prune``: flags -> recipe ([prune]) -> ``onnxquant.api.prune`` -> report."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxquant.agreement import DROP_BY as AGREEMENTS
from onnxquant.cli.command import Command
from onnxquant.cli.options import image_options, output_options, preprocess_overrides, prune_options, prune_overrides
from onnxquant.cli.output import emit, size_text
from onnxquant.cli.progress import progress
from onnxquant.recipe import load_recipe, recipe_for_target


def prune_summary(result: dict[str, Any]) -> str:
    lines = [f"wrote {result['output']}",
             f"pruned: {len(result['layers'])} layers, {result['sparsity']:.1%} of their weights zero or removed"]
    structured = result.get("structured") or {}
    if structured.get("channels_removed"):
        lines.append(f"channels removed: {structured['channels_removed']} from {len(structured['layers'])} layers")
    for node, why in (structured.get("kept") or {}).items():
        lines.append(f"  dead channels kept in {node}: {why}")
    if "search" in result:
        found = result["search"]
        lines.append(f"max-drop search: {found['amount']} (drop {found['drop']:.4f} within {found['budget']}, "
                     f"{len(found['trials'])} trials)")
    lines.append(f"size: {size_text(result['size_before'])} -> {size_text(result['size_after'])}; compressed "
                 f"{size_text(result['size_compressed_before'])} -> {size_text(result['size_compressed_after'])}")
    lines.append("  sparsity  channels-removed  weights  layer")
    for layer in result["layers"]:
        lines.append(f"  {layer['sparsity']:8.1%}  {layer['channels_removed']:16d}  {layer['weights']:7d}  {layer['node']}")
    skipped: dict[str, int] = {}
    for entry in result["skipped"]:
        skipped[entry["reason"]] = skipped.get(entry["reason"], 0) + 1
    for reason, n in sorted(skipped.items()):
        lines.append(f"not pruned: {n} layers ({reason})")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


@click.command(cls=Command)
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="Pruned (float) model to write.")
@click.option("--calib-data", type=click.Path(path_type=Path), help="Samples for --method wanda and --max-drop.")
@click.option("--holdout", type=click.Path(path_type=Path), help="Held-out samples for --max-drop (default: --calib-data).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False, path_type=Path), help="TOML recipe ([prune]); flags override it.")
@prune_options("")
@click.option("--remove-dead/--keep-dead-channels", default=None,
              help="Take all-zero channels out of the graph (default), or leave them in.")
@click.option("--depthwise", is_flag=True, help="Prune depthwise Conv filters too.")
@click.option("--channel-multiple", type=click.IntRange(min=1),
              help="Layers keep a multiple of this many channels (default 16, for onnxruntime's blocked kernels).")
@click.option("--sparse-storage", is_flag=True, help="Store sparse float initializers as ONNX sparse tensors where smaller.")
@click.option("--drop-by", type=click.Choice(AGREEMENTS), default="cosine", show_default=True,
              help="--max-drop measure: output cosine or top-1 agreement with fp32.")
@click.option("--max-samples", type=int, help="Use at most this many samples of each set.")
@image_options
@output_options("Print the report as JSON.", "No report (errors still print).")
def prune(model: Path, output: Path, calib_data: Path | None, holdout: Path | None, recipe_path: Path | None,
          remove_dead: bool | None, depthwise: bool, channel_multiple: int | None, sparse_storage: bool, drop_by: str, max_samples: int | None,
          as_json: bool, quiet: bool, debug: bool, **options: Any) -> None:
    """Prune MODEL's weights (and dead channels) to a smaller float model."""
    from onnxquant.api import prune as run_prune

    recipe = load_recipe(recipe_path) if recipe_path else recipe_for_target("cpu")
    settings = prune_overrides(options)
    settings.update({"remove_dead": remove_dead, "depthwise": depthwise or None,
                     "channel_multiple": channel_multiple,
                     "sparse_storage": sparse_storage or None})
    recipe = recipe.with_overrides(prune=settings, calibration={"max_samples": max_samples},
                                   preprocess=preprocess_overrides(options))
    if recipe.prune.max_drop is not None and calib_data is None and holdout is None:
        raise click.UsageError("--max-drop needs --calib-data (or --holdout)")
    with progress(quiet or as_json, "pruning: refitting layers", unit="layer") as update:
        result = run_prune(model, calib_data, recipe, output, holdout=holdout, agreement=drop_by, progress=update)
    emit(result.to_dict(), as_json, quiet, prune_summary)
