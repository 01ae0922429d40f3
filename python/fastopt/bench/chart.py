"""chart.png: per device, (1) % of copy bandwidth per case and backend at the largest single-tensor
size, (2) AdamW time vs size with the copy floor, (3) the many-small-tensors case."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

ROLES = ["fastopt", "numpy-ref", "torch-foreach", "torch-fused"]
COLORS = {"fastopt": "#1f5fbf", "numpy-ref": "#9a9a9a", "torch-foreach": "#f2a033", "torch-fused": "#d3423a"}


def role(backend):
    if backend.startswith("fastopt"):
        return "fastopt"
    return backend.replace("clip+", "")


def _bars(ax, rows, cases, value, ylabel, title, fmt):
    roles = [name for name in ROLES if any(role(r["backend"]) == name and r["median_ms"] for r in rows)]
    width = 0.8 / max(1, len(roles))
    for k, name in enumerate(roles):
        vals = []
        for c in cases:
            r = next((r for r in rows if r["case"] == c and role(r["backend"]) == name and r["median_ms"]), None)
            vals.append(value(r) if r else np.nan)
        x = np.arange(len(cases)) + (k - (len(roles) - 1) / 2) * width
        bars = ax.bar(x, vals, width, label=name, color=COLORS[name])
        for b, v in zip(bars, vals):
            if np.isfinite(v):
                ax.annotate(
                    fmt(v),
                    (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    rotation=90,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    ax.set_xticks(np.arange(len(cases)), cases, rotation=20, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    ax.margins(y=0.18)
    ax.grid(axis="y", alpha=0.3)


def _lines(ax, rows, device):
    rows = [r for r in rows if r["case"] == "adamw" and r["tensors"] == 1]
    for name in ROLES:
        pts = sorted((r["n"], r["median_ms"]) for r in rows if role(r["backend"]) == name and r["median_ms"])
        if pts:
            ax.plot(*zip(*pts), "o-", label=name, color=COLORS[name], lw=2 if name == "fastopt" else 1.3)
    floor = sorted({(r["n"], r["floor_ms"]) for r in rows if r["floor_ms"] and r["backend"].startswith("fastopt")})
    if floor:
        ax.plot(*zip(*floor), "k--", lw=1, label="copy floor (28 B/param)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters (one tensor)")
    ax.set_ylabel("median ms per step")
    ax.set_title(f"{device}: AdamW step time vs size", fontsize=11)
    ax.grid(which="both", alpha=0.3)


def draw(doc, path):
    devices = list(doc["devices"])
    fig, axes = plt.subplots(
        len(devices), 3, figsize=(19, 5.6 * len(devices)), squeeze=False, gridspec_kw=dict(width_ratios=[1.35, 1, 1.1])
    )
    for row_axes, device in zip(axes, devices):
        rows = [r for r in doc["rows"] if r["device"] == device and not r["backend"].startswith("copy")]
        single = [r for r in rows if r["tensors"] == 1]
        cases = list(dict.fromkeys(r["case"] for r in rows))
        name = doc["devices"][device]["name"]
        if single:
            n = max(r["n"] for r in single)
            at_n = [r for r in single if r["n"] == n]
            label = at_n[0]["size"]
            copy = [r["copy_gbs"] for r in at_n if r["copy_gbs"]]
            span = f"{min(copy):.0f}-{max(copy):.0f} GB/s" if copy else "not measured"
            _bars(
                row_axes[0],
                at_n,
                cases,
                lambda r: r["pct_copy"],
                "% of copy bandwidth (minimal bytes)",
                f"{device} ({name}), {label} params: % of copy bandwidth (copy {span})",
                lambda v: f"{v:.0f}",
            )
            row_axes[0].axhline(100, color="k", lw=0.8, ls=":")
            _lines(row_axes[1], rows, device)
        many = [r for r in rows if r["tensors"] > 1]
        if many:
            _bars(
                row_axes[2],
                many,
                cases,
                lambda r: r["median_ms"],
                "median ms per step (lower is better)",
                f"{device}: {many[0]['size']} ({many[0]['n'] / 1e6:.1f}M params)",
                lambda v: f"{v:.3g}",
            )
        else:
            row_axes[2].axis("off")
        row_axes[0].legend(fontsize=9, loc="upper right")
        row_axes[1].legend(fontsize=9)
    commit = str(doc["git"]["commit"])[:10]
    fig.suptitle(f"fastopt optimizer steps, {doc['date'][:10]}, git {commit}", fontsize=13)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
