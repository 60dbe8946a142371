"""The Markdown report and the hand-written SVG chart of a bench/compare run."""

import math
import statistics

MAIN_ROWS = ["standalone", "semisync", "galera", "quorumsql"]
EXTRA_ROWS = ["quorumsql master direct", "quorumsql RO", "quorumsql replica direct"]
COLORS = {"standalone": "#444444", "semisync": "#1f77b4", "galera": "#2ca02c",
          "quorumsql": "#d62728", "quorumsql master direct": "#ff9896", "quorumsql RO": "#9467bd",
          "quorumsql replica direct": "#c5b0d5"}
DASHED = {"quorumsql master direct", "quorumsql replica direct"}


def summarize(runs):
    """runs: list of sysbench.parse dicts of one (row, workload, threads)."""
    tps = [r["tps"] for r in runs]
    s = dict(n=len(runs), tps=statistics.median(tps), tps_min=min(tps), tps_max=max(tps),
             qps=statistics.median(r["qps"] for r in runs),
             p95=statistics.median(r["p95"] for r in runs),
             ignored=sum(r["ignored"] for r in runs))
    # CPU of the median-TPS round (not a median per field: the fields of one round belong together).
    metered = sorted((r for r in runs if r.get("cpu")), key=lambda r: r["tps"])
    if metered:
        s["cpu"] = metered[(len(metered) - 1) // 2]["cpu"]
        s["cpu_tps"] = metered[(len(metered) - 1) // 2]["tps"]
    return s


def fmt(x):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if x >= 100:
        return "{:,.0f}".format(x)
    return "%.1f" % x if x >= 10 else "%.2f" % x


def targets(S, threads):
    """(description, value text, met: True/False/None for not measured)."""
    out = []

    def ratio(a, b):
        if a and b:
            return a["tps"] / b["tps"]
        return None

    wo = ("oltp_write_only", 32)
    q, s, g = (S.get((r,) + wo) for r in ("quorumsql", "semisync", "galera"))
    for base, other, need in (("semi-sync", s, 1.0), ("Galera", g, 1.2)):
        r = ratio(q, other)
        out.append(("oltp_write_only, 32 threads: QuorumSQL >= %.1fx %s" % (need, base),
                    "%.2fx" % r if r is not None else "not measured", None if r is None else r >= need))
    for th in threads:
        r = ratio(S.get(("quorumsql", "oltp_point_select", th)),
                  S.get(("quorumsql master direct", "oltp_point_select", th)))
        out.append(("oltp_point_select at %d thread(s): RW port on the master >= 0.9x its mariadbd direct" % th,
                    "%.2fx" % r if r is not None else "not measured", None if r is None else r >= 0.9))
    for th in threads:
        r = ratio(S.get(("quorumsql RO", "oltp_read_only", th)),
                  S.get(("quorumsql replica direct", "oltp_read_only", th)))
        out.append(("oltp_read_only at %d thread(s): RO port of a replica >= 0.95x that replica direct" % th,
                    "%.2fx" % r if r is not None else "not measured", None if r is None else r >= 0.95))
    return out


def cpu_table(S, workloads, threads):
    """Where the CPU went (cpu.py), for the round with the median TPS of each case."""
    rows = []
    for wl in workloads:
        for th in threads:
            for row in MAIN_ROWS + EXTRA_ROWS:
                s = S.get((row, wl, th))
                if not s or "cpu" not in s or not s["cpu_tps"]:
                    continue
                c, tps = s["cpu"], s["cpu_tps"]
                per = [1000 * c[k] / tps for k in ("mariadbd", "quorumsql", "sysbench")]
                rows.append("| %s | %d | %s | %s | %.0f %% | %.2f | %.2f | %.2f | %.3f | %.3f | %.3f | %.3f |" % (
                    wl, th, row, fmt(tps), 100 * c["busy"], c["mariadbd"], c["quorumsql"], c["sysbench"],
                    per[0], per[1], per[2], sum(per)))
    if not rows:
        return []
    return ["", "### Where the CPU went", "",
            "Cores used during the measured run of the median round, and CPU milliseconds per transaction "
            "(cores ÷ TPS). \"quorumsql\" is every `quorumsql` process: proxy, capture, log and serve of "
            "all three nodes. Machine busy counts iowait as idle.", "",
            "| workload | thr | system | TPS | machine busy | mariadbd cores | quorumsql cores | sysbench cores "
            "| ms/txn mariadbd | ms/txn quorumsql | ms/txn sysbench | ms/txn total |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"] + rows


def markdown(S, workloads, threads, header_lines, failovers, notes, failures):
    L = list(header_lines)
    L += ["", "| workload | thr | system | TPS median (min–max) | QPS | p95 ms | × standalone | other ratio |",
          "|---|---:|---|---:|---:|---:|---:|---|"]
    for wl in workloads:
        for th in threads:
            base = S.get(("standalone", wl, th))
            for row in MAIN_ROWS + EXTRA_ROWS:
                s = S.get((row, wl, th))
                if s is None:
                    continue
                x = "%.2f×" % (s["tps"] / base["tps"]) if base and row in MAIN_ROWS else "-"
                other = "-"
                if row == "quorumsql" and (("quorumsql master direct", wl, th) in S):
                    other = "%.2f× master direct" % (s["tps"] / S[("quorumsql master direct", wl, th)]["tps"])
                if row == "quorumsql RO" and (("quorumsql replica direct", wl, th) in S):
                    other = "%.2f× replica direct" % (s["tps"] / S[("quorumsql replica direct", wl, th)]["tps"])
                spread = "%s (%s–%s)" % (fmt(s["tps"]), fmt(s["tps_min"]), fmt(s["tps_max"])) if s["n"] > 1 \
                    else fmt(s["tps"])
                L.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
                    wl, th, row, spread, fmt(s["qps"]), fmt(s["p95"]), x, other))
    L += cpu_table(S, workloads, threads)
    L += ["", "### Targets", ""]
    for desc, val, met in targets(S, threads):
        L.append("- %s: %s — **%s**" % (desc, val, {True: "met", False: "missed", None: "not measured"}[met]))
    if failovers:
        L += ["", "### Failover (kill -9 of the primary under steady single-row INSERTs)", "",
              "| system | failover s (kill → first successful write) | promotion script s | new primary | "
              "writes acked / attempted | acked lost | failed but committed |",
              "|---|---:|---:|---|---:|---:|---:|"]
        for f in failovers:
            if "error" in f:
                L.append("| %s | FAILED: %s | | | | | |" % (f["system"], f["error"][:300]))
                continue
            L.append("| %s | %s | %s | %s | %d / %d | **%d** | %d |" % (
                f["system"], "%.3f" % f["failover_s"] if f["failover_s"] is not None else "no write in 60 s",
                "%.3f" % f["promotion_s"] if "promotion_s" in f else "- (automatic)",
                f["new_primary"], f["acked"], f["attempted"], f["lost"], f["failed_but_committed"]))
        L.append("")
        for f in failovers:
            if "error" in f:
                continue
            if f.get("chosen"):
                L.append("- semisync: promoted %s; acked writes missing on the re-pointed replica: %s"
                         % (f["chosen"], f.get("lost_on_other")))
            if f.get("killed"):
                L.append("- quorumsql: killed the master %s, writes through %s's RW port"
                         % (f["killed"], f["via"]))
            if f["lost_ids"]:
                L.append("- %s: first lost ids %s" % (f["system"], f["lost_ids"]))
            errs = "; ".join("%s (%d)" % (k, v) for k, v in sorted(f["errors"].items(), key=lambda kv: -kv[1])[:4])
            if errs:
                L.append("- %s: client errors around the kill: %s" % (f["system"], errs))
        if any(f.get("system", "").startswith("semisync") for f in failovers):
            L.append("- semisync's time has no failure detection in it (the script knows when it killed); "
                     "a real tool adds its detection interval. QuorumSQL's includes detection (election timeout).")
    if notes:
        L += ["", "### Checks", ""] + ["- " + n for n in notes]
    if failures:
        L += ["", "### Failures", ""] + ["- " + f.replace("\n", "\n  ") for f in failures]
    return "\n".join(L) + "\n"


def _nice_max(v):
    if v <= 0:
        return 1.0
    e = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if m * e >= v:
            return m * e
    return 10 * e


def _esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(S, workloads, threads, title):
    """Throughput (TPS median, min–max whiskers) by thread count; one panel per workload."""
    rows = [r for r in MAIN_ROWS + EXTRA_ROWS if any((r, wl, th) in S for wl in workloads for th in threads)]
    pw, ph = 470, 300
    ml, mr, mt, mb = 70, 20, 36, 44
    cols = 2 if len(workloads) > 1 else 1
    nrows = (len(workloads) + cols - 1) // cols
    W = max(cols * pw, 940)  # room for the title and the legend even with one panel
    per_row = max(1, (W - 40) // 210)
    legend_h = 22 * ((len(rows) + per_row - 1) // per_row) + 10
    H = 40 + legend_h + nrows * ph
    o = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
         'font-family="sans-serif" font-size="12">' % (W, H, W, H),
         '<rect width="100%" height="100%" fill="white"/>',
         '<text x="%d" y="24" text-anchor="middle" font-size="15" font-weight="bold">%s</text>'
         % (W // 2, _esc(title))]
    for i, r in enumerate(rows):
        x, y = 20 + (i % per_row) * 210, 44 + 22 * (i // per_row)
        dash = ' stroke-dasharray="5,3"' if r in DASHED else ""
        o.append('<line x1="%.0f" y1="%d" x2="%.0f" y2="%d" stroke="%s" stroke-width="2.5"%s/>'
                 % (x, y, x + 24, y, COLORS[r], dash))
        o.append('<text x="%.0f" y="%d">%s</text>' % (x + 30, y + 4, _esc(r)))
    top = 40 + legend_h
    for k, wl in enumerate(workloads):
        ox, oy = (k % cols) * pw, top + (k // cols) * ph
        x0, x1, y0, y1 = ox + ml, ox + pw - mr, oy + mt, oy + ph - mb
        vals = [S[(r, wl, th)]["tps_max"] for r in rows for th in threads if (r, wl, th) in S]
        ymax = _nice_max(max(vals) if vals else 1)
        o.append('<text x="%d" y="%d" text-anchor="middle" font-weight="bold">%s</text>'
                 % ((x0 + x1) // 2, oy + 20, _esc(wl)))
        o.append('<rect x="%d" y="%d" width="%d" height="%d" fill="none" stroke="#999"/>'
                 % (x0, y0, x1 - x0, y1 - y0))
        for t in range(6):
            v = ymax * t / 5
            y = y1 - (y1 - y0) * t / 5
            o.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e5e5e5"/>' % (x0, y, x1, y))
            o.append('<text x="%d" y="%.1f" text-anchor="end">%s</text>' % (x0 - 6, y + 4, "{:,.0f}".format(v)))
        o.append('<text x="%d" y="%d" text-anchor="middle" transform="rotate(-90 %d %d)">TPS</text>'
                 % (ox + 16, (y0 + y1) // 2, ox + 16, (y0 + y1) // 2))

        def xpos(i):
            return x0 + (x1 - x0) * (i + 0.5) / len(threads)

        for i, th in enumerate(threads):
            o.append('<text x="%.1f" y="%d" text-anchor="middle">%d</text>' % (xpos(i), y1 + 16, th))
        o.append('<text x="%d" y="%d" text-anchor="middle">client threads</text>' % ((x0 + x1) // 2, y1 + 34))

        def ypos(v):
            return y1 - (y1 - y0) * v / ymax

        for r in rows:
            pts = [(xpos(i), S[(r, wl, th)]) for i, th in enumerate(threads) if (r, wl, th) in S]
            if not pts:
                continue
            dash = ' stroke-dasharray="5,3"' if r in DASHED else ""
            o.append('<polyline fill="none" stroke="%s" stroke-width="2"%s points="%s"/>' % (
                COLORS[r], dash, " ".join("%.1f,%.1f" % (x, ypos(s["tps"])) for x, s in pts)))
            for x, s in pts:
                if s["n"] > 1:
                    o.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s"/>'
                             % (x, ypos(s["tps_min"]), x, ypos(s["tps_max"]), COLORS[r]))
                o.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s %s: %.0f TPS</title></circle>'
                         % (x, ypos(s["tps"]), COLORS[r], _esc(r), _esc(wl), s["tps"]))
    o.append("</svg>")
    return "\n".join(o) + "\n"
