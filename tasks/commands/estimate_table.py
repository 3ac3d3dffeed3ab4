"""The table ``emseg plan`` prints: an estimate (:func:`emseg.tasks.commands.estimate.estimate`) in words."""

from __future__ import annotations

from typing import Any


def human_bytes(n: float) -> str:
    """Decimal units.

    >>> human_bytes(1234), human_bytes(3.2e12)
    ('1.2 kB', '3.20 TB')
    """
    for unit, size in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            v = n / size
            return f"{v:.2f} {unit}" if unit in ("PB", "TB") else f"{v:.1f} {unit}"
    return f"{n:.0f} B"


def human_seconds(s: float) -> str:
    """
    >>> human_seconds(42.0), human_seconds(5400), human_seconds(9000), human_seconds(3 * 86400)
    ('42.0 s', '90.0 min', '2.5 h', '3.0 d')
    """
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    if s < 3 * 86400:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"


def _usd(x: float) -> str:
    """
    >>> _usd(0.00123), _usd(12.5), _usd(123456.7)
    ('$0.0012', '$12.50', '$123,457')
    """
    if x < 1:
        return f"${x:.2g}"
    return f"${x:,.2f}" if x < 1000 else f"${x:,.0f}"


def _voxels(n: float) -> str:
    for unit, size in (("PVx", 1e15), ("TVx", 1e12), ("GVx", 1e9), ("MVx", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f} voxels"


def format_table(est: dict[str, Any]) -> str:
    """The estimate as a two-column text table."""
    v, b, r = est["volume"], est["blocks"], est["read"]
    sc, ts_, pb = est["scratch_bytes"], est["task_seconds"], est["seconds_per_block"]
    seg = pb["segment"]
    n_cal = len(est["calibration"]["blocks"])
    rows: list[tuple[str, str]] = [
        ("volume", f"{' x '.join(map(str, v['shape_zyx']))} voxels = {_voxels(v['voxels'])} {v['dtype']}"
                   + (f" (hypothetical; calibrated on a {' x '.join(map(str, v['sample_roi_shape_zyx']))} sample)"
                      if v["hypothetical"] else "")),
        ("blocks", f"{b['count']:,} = {' x '.join(map(str, b['grid_zyx']))} of "
                   f"{' x '.join(map(str, b['shape_zyx']))} + halo {' x '.join(map(str, b['halo_zyx']))}"),
        ("voxels read", f"{_voxels(r['voxels'])} incl. halo = {r['overhead']:.3f} x the volume "
                        f"({human_bytes(r['bytes'])} of {v['dtype']})"
                        + (f" + at most {human_bytes(r['affinities_bytes'])} of stored affinities (3 channels "
                           "on the write box and its fragment context)" if "affinities_bytes" in r else "")
                        + (f"; stage 1 reads back {human_bytes(r['affinities_read_back']['bytes'])} of stored "
                           f"affinities ({r['affinities_read_back']['overhead']:.2f} x the volume: each block's write "
                           "box and fragment context, in whole chunks)" if "affinities_read_back" in r else "")),
        ("scratch", f"peak {human_bytes(sc['peak'])}, kept after the run {human_bytes(sc['kept'])} "
                    f"({sc['kept'] / max(est['output_bytes'], 1):.0%} of the output; labels "
                    f"{human_bytes(sc['labels'])}, edges {human_bytes(sc['edges'])}); faces written "
                    f"{human_bytes(sc['faces'])} in all, deleted as the seams are matched; "
                    f"~{est['candidate_edges']:,.0f} candidate edges"),
        ("output", f"{human_bytes(est['output_bytes'])} ({est['output_encoding']})"
                   + (f" + stored affinities {human_bytes(est['affinities_bytes'])} (write.affinities)"
                      if "affinities_bytes" in est else "")),
        ("seconds per block", f"{seg['mean']:.2f} +- {seg['sd']:.2f} (min {seg['min']:.2f}, max {seg['max']:.2f}) "
                              f"stage 1 on {n_cal} block{'' if n_cal == 1 else 's'}, {est['device']}"),
        ("", f"+ {pb['seams_standin']['mean']:.3f} seams, + {pb['write_standin']['mean']:.3f} relabel/write "
             "(stand-ins)"),
        ("startup per worker", f"{est['startup_seconds']:.1f} s"),
        ("task time", f"{human_seconds(ts_['total'])} = {ts_['total'] / 3600:,.2f} worker-hours "
                      f"({human_seconds(ts_['low'])} .. {human_seconds(ts_['high'])}); "
                      f"stage 1 is {ts_['segment'] / max(ts_['total'], 1e-12):.0%}"),
    ]
    for run in est["runs"]:
        unit = "worker" if run["unit"] == "workers" else "GPU"
        label = f"wall, {run['count']} {unit}{'s' if run['count'] != 1 else ''}"
        if "model_workers" in run:
            label += f", the model on {run['model_workers']}"
        text = (f"{human_seconds(run['wall_seconds'])} ({human_seconds(run['wall_seconds_low'])} .. "
                f"{human_seconds(run['wall_seconds_high'])})")
        if "cost_usd" in run:
            text += (f", {_usd(run['cost_usd'])} at ${est['cost_per_hour_usd']:g}/{unit}-hour "
                     f"({_usd(run['cost_usd_low'])} .. {_usd(run['cost_usd_high'])})")
        rows.append((label, text))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {t}" for k, t in rows]
    lines.append("not estimated: " + "; ".join(est["not_estimated"]))
    return "\n".join(lines)
