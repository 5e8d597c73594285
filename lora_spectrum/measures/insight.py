"""One series' insight: the weight curves, the training loss with a marker per epoch file, the image measures of a
rendered grid, the probe's measures and the series' verdict, put together into one plain dict (its shape is in
docs/measures.md).
"""

from __future__ import annotations

from pathlib import Path

from lora_spectrum.errors import CatalogError, ConfigError
from lora_spectrum.language import _
from lora_spectrum.loras.catalog import READY, Catalog
from lora_spectrum.measures.image_measures import image_measures, image_row_for
from lora_spectrum.measures.numbers import Progress
from lora_spectrum.measures.probe_measures import probe_measures
from lora_spectrum.measures.training_log import place_entries, read_loss
from lora_spectrum.measures.verdict import DEFAULT_PREFERENCE, decide
from lora_spectrum.measures.weight_curves import WeightCache, weight_curves


def _epoch_loss(loss: dict | None, epoch: int | None) -> dict[str, float] | None:
    """``{tag: value}`` of the per-epoch loss tags at ``epoch`` (they use the epoch number as step)."""
    if not loss or epoch is None:
        return None
    found = {tag: v for tag in loss["per_epoch"] for s, v in loss["series"][tag] if s == epoch}
    return found or None


def series_insight(catalog: Catalog, series: str | None = None, logs: str | Path | None = None,
                   grid: str | Path | None = None, *, cache: WeightCache | None = None,
                   clip_model: str | tuple | None = None, use_clip: bool = True, allow_download: bool = False,
                   progress: Progress | None = None, lenient: bool = False, probe: str | Path | None = None,
                   references: str | Path | None = None, ratings: dict | None = None,
                   preference: str = DEFAULT_PREFERENCE) -> dict:
    """Weight curves, loss curve, image and probe measures and the verdict for one series; the shape is in
    docs/measures.md. ``ratings``: the series' blind ranking (``votes.series_ratings``), when there are votes.

    ``catalog`` is used as its caller last scanned it: this never lists the folder again, so the files measured are
    the ones the caller's view or command showed.
    """
    # 1. The series' files, from the catalog.
    series, entries = catalog.choose_series(series)
    ready = [e for e in entries if e.state == READY]
    skipped = [{"file": e.name, "reason": f"{e.state}: {e.reason}"} for e in entries if e.state != READY]
    if not ready:
        raise CatalogError(f"{catalog.folder}: no readable file in series {series!r} "
                           f"({'; '.join(s['file'] + ' ' + s['reason'] for s in skipped)})")

    # 2. Weight-space curves.
    epochs = weight_curves(ready, catalog=catalog, cache=cache, progress=progress)

    # 3. The loss curve, with a marker per epoch file.
    # With ``lenient`` (the UI), an unusable log folder or grid is reported in ``notes`` instead of failing the
    # whole insight: the weight curves and the verdict do not depend on them.
    loss, notes = None, []
    if logs:
        try:
            loss = read_loss(logs)
            loss["markers"] = place_entries(ready)
        except ConfigError as exc:
            if not lenient:
                raise
            loss, notes = None, [*notes, _("training log not used: {error}").format(error=exc)]
    for row in epochs:
        row["epoch_loss"] = _epoch_loss(loss, row["epoch"])

    # 4. Image measures from a rendered grid.
    image = None
    if grid:
        try:
            image = image_measures(grid, clip_model=clip_model, use_clip=use_clip, allow_download=allow_download,
                                   progress=progress)
        except ConfigError as exc:
            if not lenient:
                raise
            notes.append(_("image measures not available: {error}").format(error=exc))
    for row in epochs:
        row["image"] = image_row_for(image, row["file"])

    # 5. Probe measures from a probe run (style, fidelity, leak, consistency per epoch).
    probed = None
    if probe:
        try:
            probed = probe_measures(probe, clip_model=clip_model, use_clip=use_clip, references=references,
                                    allow_download=allow_download, progress=progress)
        except ConfigError as exc:
            if not lenient:
                raise
            notes.append(_("probe measures not available: {error}").format(error=exc))
    by_file = {e["file"]: e for e in (probed or {}).get("epochs", [])}
    for row in epochs:
        p = by_file.get(row["file"], {})
        row.update({k: p.get(k) for k in ("style", "fidelity", "fidelity_kept", "leak", "consistency")})

    # 6. The verdict (weight curves and the log are its context; only the probe and the votes pick).
    verdict = decide(series, epochs, probe=probed, loss=loss, ratings=ratings, preference=preference)
    return {"series": series, "folder": str(catalog.folder), "epochs": epochs, "skipped": skipped, "loss": loss,
            "image": image, "probe": probed, "notes": notes, "verdict": verdict.to_json()}
