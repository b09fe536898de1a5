#!/usr/bin/env python3
"""Helpers for scripts/bench.sh (standard library only).

  benchtool.py poll ROOT_PID OUT.json
      Samples the process tree under ROOT_PID every 50 ms until ROOT_PID
      exits: the peak resident set (VmHWM) of the coordinator (the topmost
      process named `bulkget`) and of each worker (its descendants), and
      their CPU time. VmHWM is the kernel's own high-water mark, so a sample
      taken at any time before a process exits is its peak so far; only
      growth in the last <50 ms of a process's life can be missed.

  benchtool.py fetchrow KEY=VALUE... -- TIME_FILE POLL_JSON STATE_DIR WALL_S
      Prints one result line (KEY=VALUE, tab-separated) for a fetch run from
      /usr/bin/time's output, the poller's JSON and coordinator.json.

  benchtool.py list URL [REPEATS]
      Walks the whole listing (GET /list, then ?next-marker=...) on one
      keep-alive connection and prints names/s and pages/s: the listing's
      ceiling as one serial client sees it.

  benchtool.py profile PERF_DATA STATE_DIR FILES
      Prints a Markdown summary of a `perf record` of `bulkget fetch`: the
      share of each process (coordinator, its state thread, workers), the
      workers' and the coordinator's time by library, and the workers' top
      symbols, with each converted to µs per file.

  benchtool.py report RESULTS META
      Prints the Markdown page of one run, for docs/benchmarks/: medians of
      every measured group, ratios to the wrk ceiling and the create floor.
      RESULTS has one tab-separated KEY=VALUE line per run; META one
      KEY=VALUE line per fact about the machine and the command.
"""

import glob
import http.client
import re
import subprocess
import json
import os
import statistics
import sys
import time
import urllib.parse


# --------------------------------------------------------------------------
# poll


def _children(pid):
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    out.extend(int(x) for x in f.read().split())
            except OSError:
                pass
    except OSError:
        pass
    return out


def _status(pid):
    comm, hwm = None, None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Name:"):
                    comm = line.split()[1]
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        return None, None
    return comm, hwm


def _cpu_ticks(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
        fields = s[s.rfind(")") + 2 :].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, ValueError, IndexError):
        return None


def cmd_poll(root, out):
    root = int(root)
    peak = {}  # pid -> (role, hwm_kb)
    ticks = {}
    samples = 0
    while os.path.exists(f"/proc/{root}"):
        samples += 1
        # Walk the tree; the coordinator is the topmost `bulkget`.
        stack = [(root, False)]
        while stack:
            pid, under_coord = stack.pop()
            comm, hwm = _status(pid)
            if comm is None:
                continue
            role = None
            if comm == "bulkget":
                role = "worker" if under_coord else "coordinator"
            if role and hwm is not None:
                old = peak.get(pid, (role, 0))[1]
                peak[pid] = (role, max(old, hwm))
                t = _cpu_ticks(pid)
                if t is not None:
                    ticks[pid] = t
            for c in _children(pid):
                stack.append((c, under_coord or role is not None))
        time.sleep(0.05)
    hz = os.sysconf("SC_CLK_TCK")
    coord = [h for r, h in peak.values() if r == "coordinator"]
    workers = [h for r, h in peak.values() if r == "worker"]
    coord_cpu = sum(ticks[p] for p, (r, _) in peak.items() if r == "coordinator" and p in ticks)
    with open(out, "w") as f:
        json.dump(
            {
                "coord_hwm_kb": max(coord) if coord else None,
                "worker_hwm_kb": max(workers) if workers else None,
                "workers_seen": len(workers),
                "coord_cpu_s": coord_cpu / hz,
                "samples": samples,
            },
            f,
        )


# --------------------------------------------------------------------------
# fetchrow


def cmd_fetchrow(args):
    sep = args.index("--")
    keys, (time_file, poll_json, state_dir, wall) = args[:sep], args[sep + 1 :]
    row = dict(k.split("=", 1) for k in keys)
    row["wall"] = f"{float(wall):.3f}"
    # /usr/bin/time -f "TIME user=%U sys=%S maxrss=%M exit=%x"
    with open(time_file) as f:
        for line in f:
            if line.startswith("TIME "):
                for kv in line.split()[1:]:
                    k, v = kv.split("=", 1)
                    row[{"maxrss": "tree_maxrss_kb"}.get(k, k)] = v
    try:
        with open(poll_json) as f:
            p = json.load(f)
        row["coord_hwm_kb"] = p["coord_hwm_kb"]
        row["worker_hwm_kb"] = p["worker_hwm_kb"]
        row["coord_cpu"] = f'{p["coord_cpu_s"]:.2f}'
    except (OSError, ValueError, KeyError):
        pass
    try:
        with open(os.path.join(state_dir, "coordinator.json")) as f:
            c = json.load(f)
        row["files_ok"] = c.get("files_ok")
        row["files_failed"] = c.get("files_failed")
        row["lister_wait_ms"] = c.get("lister_wait_ms")
        idle = [s.get("idle_ms") or 0 for s in c.get("shards", [])]
        row["idle_max_ms"] = max(idle) if idle else 0
    except (OSError, ValueError):
        pass
    retries = resent = 0
    shard_dir = os.path.join(state_dir, "shards")
    try:
        for name in os.listdir(shard_dir):
            if name.endswith(".json"):
                with open(os.path.join(shard_dir, name)) as f:
                    shard = json.load(f)
                retries += shard.get("retries", 0) or 0
                resent += shard.get("pipeline_retries", 0) or 0
    except (OSError, ValueError):
        pass
    row["retries"] = retries
    row["pipeline_retries"] = resent
    stats_url = os.environ.get("STATS_URL")
    if stats_url:
        try:
            import urllib.request

            with urllib.request.urlopen(stats_url + "/_stats", timeout=10) as f:
                st = json.load(f)
            row["gets"] = st["requests"]["get"]
            row["r429"] = st["responses"].get("429", 0)
            row["accepted"] = st["connections_accepted"]
        except (OSError, ValueError, KeyError):
            pass
    print("\t".join(f"{k}={v}" for k, v in row.items()))


# --------------------------------------------------------------------------
# list


def cmd_list(url, repeats="1"):
    u = urllib.parse.urlsplit(url)
    prefix = u.path.rstrip("/")
    rates = []
    for _ in range(int(repeats)):
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=30)
        path = f"{prefix}/list"
        names = pages = 0
        start = time.perf_counter()
        while path:
            conn.request("GET", path)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                sys.exit(f"list: {path}: HTTP {r.status}")
            page = json.loads(body)
            names += len(page["FileNames"])
            pages += 1
            m = page.get("NextMarker") or page.get("NextFile")
            path = f"{prefix}/list?next-marker={urllib.parse.quote(m, safe='')}" if m else None
        secs = time.perf_counter() - start
        conn.close()
        rates.append((names / secs, pages / secs, names, pages, secs))
    names_s, pages_s, names, pages, secs = sorted(rates)[len(rates) // 2]
    print(
        f"LIST names={names} pages={pages} secs={secs:.3f} "
        f"names_per_sec={names_s:.0f} pages_per_sec={pages_s:.0f}"
    )


# --------------------------------------------------------------------------
# report


def _load(path):
    """The result lines, each fetch run annotated with the measurements it is
    compared with: the wrk ceiling (depth 1) and the create floors of the same
    size measured last before it. bench.sh interleaves them in rounds, so a
    ratio compares runs made minutes apart, under the same outside load."""
    rows = []
    last_wrk, last_floor, last_clean, last_new = {}, {}, {}, {}
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line or line.startswith("#"):
                continue
            r = dict(kv.split("=", 1) for kv in line.split("\t"))
            if r.get("kind") == "wrk" and r.get("depth", "1") == "1":
                last_wrk[r["size"]] = float(r["rps"])
            elif r.get("kind") in ("wrk", "h2load") and r["size"] in last_wrk:
                r["_wrk"] = last_wrk[r["size"]]
            elif r.get("kind") == "floor":
                n = float(r["size"])
                rate = n / (float(r["secs"]) + float(r.get("sync_secs") or 0))
                last_floor[(r["size"], r["layout"])] = rate
            elif r.get("kind") == "fetch":
                tag = r.get("tag", "")
                if tag == "errors" or tag.startswith("baseline-"):
                    # A faulty run is compared with the clean run of the same
                    # binary (tag) made last before it.
                    key = (tag, r["size"])
                    if _num(r.get("err")) == 0:
                        last_clean[key] = float(r["size"]) / float(r["wall"])
                    elif key in last_clean:
                        r["_clean"] = last_clean[key]
                if tag == "baseline-old":
                    # The new build's run of the same kind just before it.
                    new = last_new.get((r["size"], r.get("err")))
                    if new:
                        r["_new"] = new
                elif tag == "baseline-new":
                    last_new[(r["size"], r.get("err"))] = r
                if r["size"] in last_wrk:
                    r["_wrk"] = last_wrk[r["size"]]
                if (r["size"], r.get("layout")) in last_floor:
                    r["_floor"] = last_floor[(r["size"], r["layout"])]
            rows.append(r)
    return rows


def _num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _median(rows, key):
    vals = [_num(r.get(key)) for r in rows]
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def _fmt(v, digits=0, unit=""):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}{unit}"
    return f"{v:,.{digits}f}{unit}"


def _group(rows, keys):
    groups = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in keys), []).append(r)
    return groups


# Positions matter: sections index the group keys (key[5] is the window...).
FETCH_KEYS = ["size", "sink", "layout", "conns", "batch", "window", "workers", "err", "page", "pipeline"]


def _fetch_stats(rs):
    n = _num(rs[0]["size"])
    wall = _median(rs, "wall")
    rates = [n / _num(r["wall"]) for r in rs]
    cpu = [(_num(r.get("user")) or 0) + (_num(r.get("sys")) or 0) for r in rs]
    complete = all(r.get("files_ok") == rs[0]["size"] and r.get("exit") == "0" for r in rs)
    vs_wrk = [n / _num(r["wall"]) / r["_wrk"] for r in rs if r.get("_wrk")]
    vs_floor = [n / _num(r["wall"]) / r["_floor"] for r in rs if r.get("_floor")]
    vs_clean = [n / _num(r["wall"]) / r["_clean"] for r in rs if r.get("_clean")]
    return {
        "vs_wrk": statistics.median(vs_wrk) if vs_wrk else None,
        "vs_floor": statistics.median(vs_floor) if vs_floor else None,
        # Faulty runs against the clean run of their round (see _load).
        "vs_clean": statistics.median(vs_clean) if vs_clean else None,
        "wall": wall,
        "rate": statistics.median(rates),
        "rates": rates,
        "cpu_us": statistics.median(cpu) / n * 1e6,
        "coord_mb": (_median(rs, "coord_hwm_kb") or 0) / 1024 or None,
        "worker_mb": (_median(rs, "worker_hwm_kb") or 0) / 1024 or None,
        "tree_mb": (_median(rs, "tree_maxrss_kb") or 0) / 1024 or None,
        "wait": _median(rs, "lister_wait_ms"),
        "idle": _median(rs, "idle_max_ms"),
        "retries": _median(rs, "retries"),
        "resent": _median(rs, "pipeline_retries"),
        "runs": len(rs),
        "complete": complete,
    }


def cmd_report(results, meta_path):
    rows = _load(results)
    meta = {}
    with open(meta_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    out = []
    w = out.append
    w(f"# Run of {meta['date']}\n")
    w(f"Command: `{meta['command']}`\n")
    w("Machine:\n")
    for k in ["nproc", "cpu", "ram", "kernel", "out_fs", "rootfs_note", "split", "load_before", "load_after", "git"]:
        if meta.get(k):
            w(f"- {k.replace('_', ' ')}: {meta[k]}")
    w("")
    w(
        "Every figure is the median of the runs shown in the `runs` column. "
        "files/s is files over the wall time of the whole `bulkget fetch` "
        "process (start-up, listing, fetching, drain and exit). CPU/file is "
        "user+sys of the coordinator and every worker (from `/usr/bin/time`, "
        "which includes the reaped workers) over the files. RSS is VmHWM, "
        "sampled every 50 ms per process. × wrk ceiling and × create floor are medians of "
        "per-run ratios, each run against the wrk and create_floor runs of the same round "
        "(the last ones measured before it), so outside load hits both sides alike.\n"
    )

    ceil = {}
    # The refs block (tags ref-*) has tables of its own.
    plain_wrk = [
        r for r in rows if r["kind"] == "wrk" and r.get("depth", "1") == "1" and not r.get("tag", "").startswith("ref-")
    ]
    for (size,), rs in _group(plain_wrk, ["size"]).items():
        ceil[size] = _median(rs, "rps")
    floor = {}  # create only
    floor_sync = {}  # create, then syncfs: what a whole fetch run also pays
    for (size, layout), rs in _group([r for r in rows if r["kind"] == "floor"], ["size", "layout"]).items():
        floor[(size, layout)] = statistics.median(_num(r["size"]) / _num(r["secs"]) for r in rs)
        if all(_num(r.get("sync_secs")) is not None for r in rs):
            floor_sync[(size, layout)] = statistics.median(
                _num(r["size"]) / (_num(r["secs"]) + _num(r["sync_secs"])) for r in rs
            )

    # ---- the main table
    main = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "main"]
    if main:
        w("## Throughput, CPU and memory by sink and size\n")
        w(
            "| files | case | runs | wall s | files/s | × wrk ceiling | × create floor | "
            "CPU µs/file | coord RSS MB | max worker RSS MB | lister wait ms | max shard idle ms | complete |"
        )
        w("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        sizes = sorted({r["size"] for r in main + plain_wrk if r["kind"] in ("fetch", "wrk")} | {r["size"] for r in rows if r["kind"] == "floor"}, key=int)
        for size in sizes:
            if size in ceil:
                rs = [r for r in plain_wrk if r["size"] == size]
                w(
                    f"| {int(size):,} | wrk ceiling (GET /get, {rs[0].get('conns')} conns; CPU is wrk's per request) | {len(rs)} | "
                    f"{_fmt(_median(rs, 'secs'), 1)} | **{_fmt(ceil[size])}** | 1.00 | | {_fmt(_median(rs, 'cpu_us'), 1)} | | | | | |"
                )
            for layout in ["flat", "flat-openat2", "fanout"]:
                if (size, layout) in floor:
                    rs = [r for r in rows if r["kind"] == "floor" and r["size"] == size and r["layout"] == layout]
                    w(
                        f"| {int(size):,} | create floor, {layout} (create only) | {len(rs)} | "
                        f"{_fmt(_median(rs, 'secs'), 1)} | {_fmt(floor[(size, layout)])} | | | "
                        f"{_fmt(_median(rs, 'cpu_us'), 1)} | | | | | |"
                    )
                    if (size, layout) in floor_sync:
                        w(
                            f"| {int(size):,} | create floor, {layout}, + final syncfs | {len(rs)} | "
                            f"{_fmt(_median(rs, 'secs') + _median(rs, 'sync_secs'), 1)} | **{_fmt(floor_sync[(size, layout)])}** | | 1.00 | "
                            f" | | | | | |"
                        )
            groups = _group([r for r in main if r["size"] == size], FETCH_KEYS)
            order = {"null": 0, "dir": 1, "sqlite": 2}
            lorder = {"flat": 0, "fanout": 1}
            for key in sorted(groups, key=lambda k: (order.get(k[1], 9), lorder.get(k[2], 9))):
                rs = groups[key]
                s = _fetch_stats(rs)
                sink, layout = key[1], key[2]
                label = f"fetch --sink {sink}" + (f" --layout {layout}" if sink == "dir" else "")
                ratio = s["vs_wrk"]
                fl = s["vs_floor"] if sink == "dir" else None
                w(
                    f"| {int(size):,} | {label} | {s['runs']} | {_fmt(s['wall'], 1)} | {_fmt(s['rate'])} | "
                    f"{_fmt(ratio, 2)} | {_fmt(fl, 2) if fl else ''} | {_fmt(s['cpu_us'], 1)} | "
                    f"{_fmt(s['coord_mb'], 1)} | {_fmt(s['worker_mb'], 1)} | {_fmt(s['wait'])} | "
                    f"{_fmt(s['idle'])} | {'yes' if s['complete'] else '**NO**'} |"
                )
        w("")

    # ---- targets
    if main:
        w("## Against the targets of issue 6\n")
        w("| target | measured | met |")
        w("|---|---|---|")
        for size in sorted({r["size"] for r in main}, key=int):
            nul = [r for r in main if r["size"] == size and r["sink"] == "null"]
            if nul and size in ceil:
                s = _fetch_stats(nul)
                ratio = s["vs_wrk"]
                w(f"| null sink ≥ 0.8 × wrk ceiling ({int(size):,} files) | {ratio:.2f} × | {'yes' if ratio >= 0.8 else 'no'} |")
                wrk_cpu = _median([r for r in plain_wrk if r["size"] == size], "cpu_us")
                if wrk_cpu:
                    eff = wrk_cpu / s["cpu_us"]
                    w(
                        f"| the same from CPU cost: wrk's µs/request ÷ bulkget's µs/file ({int(size):,}); "
                        f"what the ratio is when the client's core is the limit and nothing else runs on it | "
                        f"{wrk_cpu:.1f} ÷ {s['cpu_us']:.1f} = {eff:.2f} × | {'yes' if eff >= 0.8 else 'no'} |"
                    )
                w(f"| client CPU ≤ 15 µs/file, null sink ({int(size):,}) | {s['cpu_us']:.1f} µs | {'yes' if s['cpu_us'] <= 15 else 'no'} |")
            for layout in ["flat", "fanout"]:
                d = [r for r in main if r["size"] == size and r["sink"] == "dir" and r["layout"] == layout]
                if d and (size, layout) in floor:
                    s = _fetch_stats(d)
                    slow = floor[(size, layout)] / s["rate"]
                    fair = 1 / s["vs_floor"] if s["vs_floor"] else floor_sync.get((size, layout), floor[(size, layout)]) / s["rate"]
                    w(
                        f"| dir sink ({layout}) within 1.5 × of the create floor ({int(size):,}) | "
                        f"{fair:.2f} × slower than create + syncfs ({slow:.2f} × than create alone) | "
                        f"{'yes' if fair <= 1.5 else 'no'} |"
                    )
        for sink in ["null", "sqlite"]:
            sizes = sorted({r["size"] for r in main if r["sink"] == sink}, key=int)
            if len(sizes) >= 2:
                lo, hi = sizes[0], sizes[-1]
                a = _fetch_stats([r for r in main if r["size"] == lo and r["sink"] == sink])
                b = _fetch_stats([r for r in main if r["size"] == hi and r["sink"] == sink])
                for what in ["coord_mb", "worker_mb"]:
                    if a[what] and b[what]:
                        g = b[what] / a[what] - 1
                        w(
                            f"| {what.split('_')[0]} peak RSS within 10 % from {int(lo):,} to {int(hi):,} files ({sink}) | "
                            f"{a[what]:.1f} → {b[what]:.1f} MB ({g:+.0%}) | {'yes' if g <= 0.10 else 'no'} |"
                        )
        nulls = [r for r in main if r["sink"] == "null" and _num(r["size"]) >= 1e6] or [
            r for r in main if r["sink"] == "null"
        ]
        if nulls:
            share = [(_num(r.get("lister_wait_ms")) or 0) / 1000 / _num(r["wall"]) for r in nulls]
            idle = [(_num(r.get("idle_max_ms")) or 0) for r in nulls]
            idle_share = max(i / 1000 / _num(r["wall"]) for i, r in zip(idle, nulls))
            w(
                f"| lister never starves workers (null sink, every run of ≥ 10^6 files) | the lister waited for room "
                f"{min(share):.0%}–{max(share):.0%} of the wall time; the longest a shard held no batch "
                f"was {max(idle):,.0f} ms ({idle_share:.1%} of its run, start-up and drain included) | "
                f"{'yes' if idle_share < 0.02 else 'no'} |"
            )
        w("")

    # ---- sweeps
    for tag, knob, title in [
        ("conns", "conns", "Connections per worker (null sink)"),
        ("batch", "batch", "Batch size (null sink)"),
        ("window", "window", "Window (null sink)"),
        ("workers", "workers", "Workers (null sink)"),
    ]:
        sw = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == tag]
        if not sw:
            continue
        w(f"## {title}\n")
        w(f"| files | {knob} | runs | files/s | × wrk ceiling | CPU µs/file | max worker RSS MB | runs files/s |")
        w("|---:|---:|---:|---:|---:|---:|---:|---|")
        for key, rs in sorted(_group(sw, FETCH_KEYS).items(), key=lambda kv: (int(kv[0][0]), int(kv[1][0][knob]))):
            s = _fetch_stats(rs)
            size = rs[0]["size"]
            ratio = s["vs_wrk"]
            w(
                f"| {int(size):,} | {rs[0][knob]} | {s['runs']} | {_fmt(s['rate'])} | {_fmt(ratio, 2)} | "
                f"{_fmt(s['cpu_us'], 1)} | {_fmt(s['worker_mb'], 1)} | {' '.join(_fmt(x) for x in s['rates'])} |"
            )
        w("")

    # ---- protocols
    pr = [r for r in rows if r["kind"] == "fetch" and r.get("tag", "").startswith("proto-")]
    if pr:
        w("## Protocols: HTTP/1.1, HTTP/2 and TLS (null sink)\n")
        w("http1 is plain HTTP/1.1 unpipelined (--pipeline 1), the base of the CPU ratio; http1-pipe the same at the "
          "default --pipeline; https1 TLS with --http-version 1.1; https-h2 TLS with the defaults (h2 by ALPN). "
          "Over HTTP/2, connections is the number of concurrent streams, 32 to a connection.\n")
        base = _fetch_stats([r for r in pr if r["tag"] == "proto-http1"]) if any(r["tag"] == "proto-http1" for r in pr) else None
        w("| files | protocol | connections | runs | files/s | CPU µs/file | × HTTP/1.1 CPU | max worker RSS MB |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|")
        for key, rs in sorted(_group(pr, ["size", "tag", "conns"]).items(), key=lambda kv: (int(kv[0][0]), kv[0][1], int(kv[0][2]))):
            s = _fetch_stats(rs)
            ratio = s["cpu_us"] / base["cpu_us"] if base and base["cpu_us"] and s["cpu_us"] else None
            w(
                f"| {int(key[0]):,} | {key[1][6:]} | {key[2]} | {s['runs']} | {_fmt(s['rate'])} | "
                f"{_fmt(s['cpu_us'], 1)} | {_fmt(ratio, 2)} | {_fmt(s['worker_mb'], 1)} |"
            )
        w("")

    # ---- split
    sp = [r for r in rows if r["kind"] == "fetch" and r.get("tag", "").startswith("split-")]
    if sp:
        w("## CPU split: pinned halves against everything on every CPU (null sink)\n")
        w("| files | split | workers | runs | wrk req/s | bulkget files/s | × wrk | CPU µs/file |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|")
        for key, rs in sorted(_group(sp, ["size", "tag"]).items()):
            s = _fetch_stats(rs)
            wr = [r for r in rows if r["kind"] == "wrk" and r.get("tag") == key[1] and r["size"] == key[0]]
            w(
                f"| {int(key[0]):,} | {key[1][6:]} | {rs[0]['workers']} | {s['runs']} | {_fmt(_median(wr, 'rps'))} | "
                f"{_fmt(s['rate'])} | {_fmt(s['vs_wrk'], 2)} | {_fmt(s['cpu_us'], 1)} |"
            )
        w("")

    # ---- pipelining
    pw = [r for r in rows if r["kind"] == "wrk" and r.get("depth", "1") != "1" and not r.get("tag", "").startswith("ref-")]
    if pw:
        w("## wrk with HTTP/1.1 pipelining (sweeps; bulkget's own pipelining is in the refs block)\n")
        w("× unpipelined is the median over rounds of each pipelined run against the unpipelined run just before it.\n")
        w("| files | depth | runs | req/s | × unpipelined | wrk CPU µs/request |")
        w("|---:|---:|---:|---:|---:|---:|")
        allw = [r for r in rows if r["kind"] == "wrk" and not r.get("tag", "").startswith("ref-")]
        for (size, depth), rs in sorted(_group(allw, ["size", "depth"]).items(), key=lambda kv: (int(kv[0][0]), int(kv[0][1] or 1))):
            if size not in {r["size"] for r in pw}:
                continue
            if depth in ("", "1"):
                bases = {r.get("_wrk") for r in pw}
                rs = [r for r in rs if _num(r["rps"]) in bases] or rs
                ratio = 1.0
            else:
                ratios = [_num(r["rps"]) / r["_wrk"] for r in rs if r.get("_wrk")]
                ratio = statistics.median(ratios) if ratios else None
            w(
                f"| {int(size):,} | {depth or 1} | {len(rs)} | {_fmt(_median(rs, 'rps'))} | "
                f"{_fmt(ratio, 2)} | {_fmt(_median(rs, 'cpu_us'), 1)} |"
            )
        w("")

    # ---- latency
    la = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "latency"]
    if la:
        w("## Service latency: the defaults against fixed `--connections` (null sink)\n")
        w("`bulkget-server --latency-ms L` delays every GET. *default* is this build's flags "
          "(`--adaptive on`, the in-flight limit finding its level under `--connections`); "
          "*fixed* is `--adaptive off --connections C` (every connection used, each pipelined "
          "to the default depth). × best fixed is the default's files/s over the best fixed row "
          "of the same latency; × best within is over the best fixed row with no more connections "
          "than the default's `--connections`, the most it may open.\n")
        w("| latency ms | files | flags | runs | wall s | files/s | × best fixed | × best within | connections accepted | CPU µs/file |")
        w("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        g = _group(la, ["latency", "size", "mode", "conns"])
        ceiling = {lat: int(conns) for (lat, size, mode, conns) in g if mode == "default"}
        best, within = {}, {}
        for (lat, size, mode, conns), rs in g.items():
            if mode == "fixed":
                rate = _fetch_stats(rs)["rate"] or 0
                best[lat] = max(best.get(lat, 0), rate)
                if int(conns) <= ceiling.get(lat, 0):
                    within[lat] = max(within.get(lat, 0), rate)
        for (lat, size, mode, conns), rs in sorted(
            g.items(), key=lambda kv: (int(kv[0][0]), kv[0][2] != "default", int(kv[0][3]))
        ):
            s = _fetch_stats(rs)
            flags = "defaults" if mode == "default" else f"--adaptive off -c {conns}"
            ratio = s["rate"] / best[lat] if mode == "default" and best.get(lat) else None
            ratio_within = s["rate"] / within[lat] if mode == "default" and within.get(lat) else None
            w(
                f"| {lat} | {int(size):,} | {flags} | {s['runs']} | {_fmt(s['wall'], 1)} | {_fmt(s['rate'])} | "
                f"{_fmt(ratio, 2)} | {_fmt(ratio_within, 2)} | {_fmt(_median(rs, 'accepted'))} | {_fmt(s['cpu_us'], 1)} |"
            )
        w("")

    # ---- throttling
    th = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "throttle"]
    if th:
        w("## A rate-limited service (`bulkget-server --rate-limit R`, null sink)\n")
        w("The server answers 429 with `Retry-After: 1` above R GETs a second (a token bucket "
          "with a tenth of a second of burst). Ideal is N / R seconds; 429 share is the server's "
          "429s over all its GETs.\n")
        w("| files | R | --adaptive | runs | wall s | × ideal | GETs | 429 share | files failed |")
        w("|---:|---:|---|---:|---:|---:|---:|---:|---:|")
        g = _group(th, ["size", "rate_limit", "adaptive"])
        for (size, rate, adaptive), rs in sorted(g.items(), key=lambda kv: (kv[0][0], kv[0][2] != "on")):
            s = _fetch_stats(rs)
            ideal = _num(size) / _num(rate)
            gets = _median(rs, "gets")
            share = statistics.median(
                [_num(r["r429"]) / _num(r["gets"]) for r in rs if _num(r.get("gets"))]
            ) if any(_num(r.get("gets")) for r in rs) else None
            w(
                f"| {int(size):,} | {rate} | {adaptive} | {s['runs']} | {_fmt(s['wall'], 1)} | "
                f"{_fmt(s['wall'] / ideal if s['wall'] else None, 2)} | {_fmt(gets)} | "
                f"{_fmt(share * 100 if share is not None else None, 1, ' %')} | {_fmt(_median(rs, 'files_failed'))} |"
            )
        w("")

    # ---- errors
    er = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "errors"]
    if er:
        w("## Transient errors (`--error-rate 0.2`) against a clean run (null sink)\n")
        w("× clean is the median over runs of each run against the clean run of its round (or, for "
          "runs without one, against the median clean run).\n")
        w("| files | server --error-rate | --window | runs | wall s | files/s | retries | CPU µs/file | × clean |")
        w("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        g = _group(er, FETCH_KEYS)
        clean = {k[0]: _fetch_stats(rs)["rate"] for k, rs in g.items() if _num(k[7]) == 0}
        for key, rs in sorted(g.items(), key=lambda kv: (int(kv[0][0]), _num(kv[0][7]), int(kv[0][5]))):
            s = _fetch_stats(rs)
            base = clean.get(key[0])
            vs_clean = s["vs_clean"] or (s["rate"] / base if base else None)
            w(
                f"| {int(key[0]):,} | {key[7]} | {key[5]} | {s['runs']} | {_fmt(s['wall'], 1)} | {_fmt(s['rate'])} | "
                f"{_fmt(s['retries'])} | {_fmt(s['cpu_us'], 1)} | {_fmt(vs_clean, 2)} |"
            )
        w("")

    # ---- before/after
    ba = [r for r in rows if r["kind"] == "fetch" and r.get("tag", "").startswith("baseline-")]
    if ba:
        w("## This build against the baseline (null sink, alternating)\n")
        w(f"Baseline: {meta.get('baseline', '?')}. Each binary at its own default window. "
          "new ÷ old is the median over rounds of the new build's run against the old one's "
          "run of the same kind in the same round (files/s, and CPU per file).\n")
        w("| files | server --error-rate | build | --window | runs | files/s | × wrk | × its clean | "
          "CPU µs/file | coordinator CPU µs/file | new ÷ old files/s | new ÷ old CPU/file |")
        w("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

        def cpu(r):
            return (_num(r.get("user")) or 0) + (_num(r.get("sys")) or 0)

        g = _group(ba, ["size", "err", "tag", "window"])
        order = sorted(g.items(), key=lambda kv: (int(kv[0][0]), _num(kv[0][1]), kv[0][2] != "baseline-new"))
        for (size, err, tag, window), rs in order:
            s = _fetch_stats(rs)
            n = _num(size)
            coord = _median(rs, "coord_cpu")
            pairs = [
                (r["_new"], r)
                for r in ba
                if r.get("tag") == "baseline-old" and r.get("_new") and r["size"] == size and r.get("err") == err
            ]
            rate_ratio = cpu_ratio = None
            if tag == "baseline-new" and pairs:
                rate_ratio = statistics.median(_num(o["wall"]) / _num(nw["wall"]) for nw, o in pairs)
                cpu_ratio = statistics.median(cpu(nw) / cpu(o) for nw, o in pairs if cpu(o) > 0)
            w(
                f"| {int(n):,} | {err} | {tag[len('baseline-'):]} | {window} | {s['runs']} | {_fmt(s['rate'])} | "
                f"{_fmt(s['vs_wrk'], 2) if _num(err) == 0 else '–'} | "
                f"{_fmt(s['vs_clean'], 2) if s['vs_clean'] else '–'} | {_fmt(s['cpu_us'], 1)} | "
                f"{_fmt(coord / n * 1e6 if coord is not None else None, 2)} | "
                f"{_fmt(rate_ratio, 2) if rate_ratio else ''} | {_fmt(cpu_ratio, 2) if cpu_ratio else ''} |"
            )
        w("")

    # ---- listing
    li = [r for r in rows if r["kind"] == "list"]
    lf = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "lister"]
    if li or lf:
        w("## The lister\n")
        if li:
            w("Standalone walk of the listing on one keep-alive connection (`benchtool.py list`, Python's http.client and json):\n")
            w("| files | page size | runs | secs | pages/s | names/s |")
            w("|---:|---:|---:|---:|---:|---:|")
            for (size, page), rs in sorted(_group(li, ["size", "page"]).items(), key=lambda kv: (int(kv[0][0]), int(kv[0][1]))):
                w(
                    f"| {int(size):,} | {page} | {len(rs)} | {_fmt(_median(rs, 'secs'), 2)} | "
                    f"{_fmt(_median(rs, 'pages_per_sec'))} | {_fmt(_median(rs, 'names_per_sec'))} |"
                )
            w("")
        if lf:
            w(
                "Inside `bulkget fetch --sink null`: the lister's busy time is at most wall − lister wait "
                "(whether or not it has a thread of its own), so names / (wall − wait) is a lower bound on the "
                "rate the lister reaches; `max shard idle` is the longest a shard held no batch "
                "(start-up before the first batch and the drain after the last included):\n"
            )
            w("| files | page size | runs | wall s | lister wait ms | lister ≥ names/s | max shard idle ms |")
            w("|---:|---:|---:|---:|---:|---:|---:|")
            for key, rs in sorted(_group(lf, FETCH_KEYS).items(), key=lambda kv: (int(kv[0][0]), int(kv[0][8] or 0))):
                s = _fetch_stats(rs)
                n = _num(key[0])
                busy = s["wall"] - (s["wait"] or 0) / 1000
                w(
                    f"| {int(n):,} | {key[8]} | {s['runs']} | {_fmt(s['wall'], 1)} | {_fmt(s['wait'])} | "
                    f"{_fmt(n / busy if busy > 0 else None)} | {_fmt(s['idle'])} |"
                )
            w("")

    # ---- reference servers and pipelining
    # The reference servers, by tag, and how the tables name them.
    ref_servers = [
        ("ref-bulkget-server", "bulkget-server"),
        ("ref-coalescing", "bulkget-server --coalesce-pipelined"),
        ("ref-nginx", "nginx"),
    ]
    refs = [r for r in rows if r.get("tag") in dict(ref_servers)]
    if refs:
        w("## Reference servers and pipelining (null sink)\n")
        w(
            "Each server in turn, pinned as above: wrk unpipelined and pipelined, h2load over h2c "
            "(as many connections, `m` streams in flight on each), and `bulkget fetch --sink null` at "
            "each `--pipeline` depth. × wrk is the median over rounds of each run against wrk at "
            "depth 1 on the same server in the same round. CPU is the client's: wrk's or h2load's per "
            "request, bulkget's (coordinator and worker) per file. Resent: requests bulkget sent again "
            "after a server closed a pipelined connection (nginx closes one every 1,000 requests).\n"
        )
        w("| server | client | depth or streams | runs | req/s or files/s | × wrk depth 1 | CPU µs/request or file | resent | complete |")
        w("|---|---|---:|---:|---:|---:|---:|---:|---|")
        for tag, server in ref_servers:
            rs_tag = [r for r in refs if r.get("tag") == tag]
            wr = [r for r in rs_tag if r["kind"] == "wrk"]
            for (depth,), rs in sorted(_group(wr, ["depth"]).items(), key=lambda kv: int(kv[0][0] or 1)):
                ratios = [_num(r["rps"]) / r["_wrk"] for r in rs if r.get("_wrk")]
                ratio = 1.0 if depth in ("", "1") else (statistics.median(ratios) if ratios else None)
                w(
                    f"| {server} | wrk | {depth or 1} | {len(rs)} | {_fmt(_median(rs, 'rps'))} | {_fmt(ratio, 2)} | "
                    f"{_fmt(_median(rs, 'cpu_us'), 1)} | | |"
                )
            h2 = [r for r in rs_tag if r["kind"] == "h2load"]
            for (streams,), rs in sorted(_group(h2, ["streams"]).items(), key=lambda kv: int(kv[0][0])):
                ratios = [_num(r["rps"]) / r["_wrk"] for r in rs if r.get("_wrk")]
                w(
                    f"| {server} | h2load (h2c) | m={streams} | {len(rs)} | {_fmt(_median(rs, 'rps'))} | "
                    f"{_fmt(statistics.median(ratios) if ratios else None, 2)} | {_fmt(_median(rs, 'cpu_us'), 1)} | | |"
                )
            fe = [r for r in rs_tag if r["kind"] == "fetch"]
            for (depth,), rs in sorted(_group(fe, ["pipeline"]).items(), key=lambda kv: int(kv[0][0] or 1)):
                st = _fetch_stats(rs)
                w(
                    f"| {server} | bulkget --pipeline | {depth} | {st['runs']} | **{_fmt(st['rate'])}** | "
                    f"**{_fmt(st['vs_wrk'], 2)}** | {_fmt(st['cpu_us'], 1)} | {_fmt(st['resent'])} | "
                    f"{'yes' if st['complete'] else '**NO**'} |"
                )
        w("")
        default = meta.get("pipeline_default", "1")
        w(f"Against the targets of issue 16 (bulkget at this build's default, `--pipeline {default}`, and at its best depth):\n")
        w("| target | server | measured | met |")
        w("|---|---|---|---|")
        for tag, server in ref_servers:
            fe = [r for r in refs if r.get("tag") == tag and r["kind"] == "fetch"]
            if not fe:
                continue
            stats = {d: _fetch_stats(rs) for (d,), rs in _group(fe, ["pipeline"]).items()}
            best = max(stats, key=lambda d: stats[d]["vs_wrk"] or 0)
            for label, d in [("default", default), ("best", best)]:
                st = stats.get(d)
                if not st:
                    continue
                ratio, cpu = st["vs_wrk"], st["cpu_us"]
                w(
                    f"| null sink ≥ 1.3 × wrk's unpipelined ceiling ({label}: depth {d}) | {server} | "
                    f"{_fmt(ratio, 2)} × | {'yes' if ratio and ratio >= 1.3 else 'no'} |"
                )
                w(
                    f"| client CPU ≤ 5 µs per file, null sink ({label}: depth {d}) | {server} | "
                    f"{_fmt(cpu, 1)} µs | {'yes' if cpu <= 5 else 'no'} |"
                )
        w("")

    sk = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "ref-sinks"]
    if sk:
        w("## Sinks with and without pipelining (bulkget-server)\n")
        w("× depth 1 is the median over rounds of each run's CPU per file against the depth-1 run of the same sink in the same round.\n")
        w("| files | sink | --pipeline | runs | files/s | × wrk | CPU µs/file | CPU × depth 1 | complete |")
        w("|---:|---|---:|---:|---:|---:|---:|---:|---|")

        def cpu_of(r):
            return ((_num(r.get("user")) or 0) + (_num(r.get("sys")) or 0)) / _num(r["size"]) * 1e6

        last = {}
        vs_one = {}
        for r in sk:
            key = (r["size"], r["sink"])
            if r.get("pipeline") == "1":
                last[key] = cpu_of(r)
            elif key in last:
                vs_one.setdefault(key + (r.get("pipeline"),), []).append(cpu_of(r) / last[key])
        for key, rs in sorted(_group(sk, ["size", "sink", "pipeline"]).items(), key=lambda kv: (int(kv[0][0]), kv[0][1], int(kv[0][2]))):
            st = _fetch_stats(rs)
            rel = vs_one.get(key)
            w(
                f"| {int(key[0]):,} | {key[1]} | {key[2]} | {st['runs']} | {_fmt(st['rate'])} | {_fmt(st['vs_wrk'], 2)} | "
                f"{_fmt(st['cpu_us'], 1)} | {_fmt(statistics.median(rel), 2) if rel else ('1.00' if key[2] == '1' else '')} | "
                f"{'yes' if st['complete'] else '**NO**'} |"
            )
        w("")

    # ---- cluster
    cl = [r for r in rows if r["kind"] == "cluster"]
    if cl:
        w("## Cluster (NATS JetStream)\n")
        w(
            "`bulkget cluster list` publishing every batch (1,000 names, confirmed) to a private nats-server "
            "with no host taking them, and a 2-host run (hosts of 1 worker, null sink) with its CPU: hosts, "
            "lister and nats-server. `fetch` is the same round's `fetch --sink null` (tag cluster-ref); the "
            "single-host lister's own rate is in \"The lister\".\n"
        )
        w("| phase | files | runs | wall s | names/s | nats-server CPU µs/file | lister CPU µs/file | hosts CPU µs/file | all CPU µs/file |")
        w("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for (phase, size), rs in sorted(_group(cl, ["phase", "size"]).items()):
            n = int(size)
            per = lambda key: _fmt(_median(rs, key) / n * 1e6, 1) if _median(rs, key) is not None else "–"
            hosts = per("hosts_cpu") if phase == "run" else "–"
            every = [
                (_num(r.get("nats_cpu")) or 0) + (_num(r.get("lister_cpu")) or 0) + (_num(r.get("hosts_cpu")) or 0)
                for r in rs
            ]
            w(
                f"| {phase} | {n:,} | {len(rs)} | {_fmt(_median(rs, 'wall'), 2)} | "
                f"{_fmt(n / _median(rs, 'wall'))} | {per('nats_cpu')} | {per('lister_cpu')} | {hosts} | "
                f"{_fmt(statistics.median(every) / n * 1e6, 1)} |"
            )
        ref = [r for r in rows if r["kind"] == "fetch" and r.get("tag") == "cluster-ref"]
        if ref:
            cpus = [_num(r["user"]) + _num(r["sys"]) for r in ref if r.get("user")]
            if cpus:
                n = int(ref[0]["size"])
                w(
                    f"| fetch | {n:,} | {len(ref)} | {_fmt(_median(ref, 'wall'), 2)} | "
                    f"{_fmt(n / _median(ref, 'wall'))} | – | – | – | {_fmt(statistics.median(cpus) / n * 1e6, 1)} |"
                )
        w("")

    # ---- notes from the script
    notes = [r for r in rows if r["kind"] == "note"]
    if notes:
        w("## Notes from this run\n")
        for r in notes:
            w(f"- {r['text']}")
        w("")
    print("\n".join(out))


# --------------------------------------------------------------------------
# profile

_CRATES = [
    "tokio", "hyper", "http::", "httparse", "bytes", "bulkget_", "mio", "serde", "bincode",
    "std::", "core::", "alloc::", "atomic_waker", "futures", "want", "tracing", "rusqlite",
    "libsqlite3", "sqlite3",
]


def _category(dso, kind, sym):
    if kind == "k":
        return "kernel"
    if "libc" in dso:
        if re.search(r"malloc|free|_int_|unlink_chunk|tcache|realloc|calloc", sym):
            return "libc malloc/free"
        if "mem" in sym:
            return "libc memcpy/memmove"
        return "libc other (syscall stubs)"
    if "vdso" in dso:
        return "vdso (clock_gettime)"
    s = sym.lstrip("<&")
    for p in _CRATES:
        if s.startswith(p):
            return p.rstrip(":_")
    return "other"


def _perf_rows(data):
    """(ns, tid, comm, dso, kind, sym) for every (thread, symbol) of a perf.data."""
    out = subprocess.run(
        ["perf", "report", "-i", data, "--no-children", "--stdio", "-g", "none",
         "--sort", "pid,dso,sym", "-F", "period,pid,dso,sym"],
        capture_output=True, text=True, check=False,
    ).stdout
    rows = []
    for l in out.splitlines():
        m = re.match(r"\s*(\d+)\s+(\d+):(\S+)\s+(\S+)\s+\[(.)\]\s+(.*\S)", l)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), m.group(3), m.group(4), m.group(5), m.group(6)))
    return rows


def cmd_profile(data, state_dir, files):
    files = float(files)
    try:
        with open(os.path.join(state_dir, "coordinator.json")) as f:
            coord_pid = json.load(f)["pid"]
    except (OSError, ValueError, KeyError):
        coord_pid = None
    worker_pids = set()
    for path in glob.glob(os.path.join(state_dir, "shards", "*.json")):
        try:
            with open(path) as f:
                pid = json.load(f).get("pid")
            if pid:
                worker_pids.add(int(pid))
        except (OSError, ValueError):
            pass
    rows = _perf_rows(data)
    total_ns = sum(r[0] for r in rows)
    if not total_ns:
        print("(no samples)")
        return

    # perf's "pid" here is the thread id; a worker is one thread (plus idle
    # helpers), the coordinator has its main thread and the state thread.
    def role(tid, comm):
        if tid == coord_pid:
            return "coordinator (main thread)"
        if tid in worker_pids:
            return "workers"
        if comm.startswith("bulkget-state"):
            return "coordinator (state thread: checkpoints, syncfs)"
        return f"other threads ({comm})"

    roles = {}
    for ns, tid, comm, *_ in rows:
        k = role(tid, comm)
        roles[k] = roles.get(k, 0) + ns
    print(f"{total_ns / 1e9:.2f} s of CPU sampled for {files:,.0f} files: {total_ns / files / 1e3:.2f} µs per file "
          "(perf's own overhead included).\n")
    print("| thread | share | µs per file |")
    print("|---|---:|---:|")
    for k, ns in sorted(roles.items(), key=lambda kv: -kv[1]):
        print(f"| {k} | {ns / total_ns:.1%} | {ns / files / 1e3:.2f} |")
    print()

    def by_category(which, title):
        sel = [r for r in rows if role(r[1], r[2]) == which]
        own = sum(r[0] for r in sel)
        if not own:
            return
        cats = {}
        for ns, _, _, dso, kind, sym in sel:
            c = _category(dso, kind, sym)
            cats[c] = cats.get(c, 0) + ns
        print(f"{title}, by where the time goes:\n")
        print("| where | % of this thread | µs/file |")
        print("|---|---:|---:|")
        for c, ns in sorted(cats.items(), key=lambda kv: -kv[1])[:14]:
            print(f"| {c} | {ns / own:.1%} | {ns / files / 1e3:.2f} |")
        print()

    by_category("workers", "Workers")
    by_category("coordinator (main thread)", "Coordinator main thread")
    sel = [r for r in rows if role(r[1], r[2]) == "workers"]
    own = sum(r[0] for r in sel)
    if own:
        syms = {}
        for ns, _, _, dso, kind, sym in sel:
            syms[(dso, kind, sym)] = syms.get((dso, kind, sym), 0) + ns
        print("Workers' top symbols (self time, % of the workers' time, µs per file):\n")
        print("```text")
        for (dso, kind, sym), ns in sorted(syms.items(), key=lambda kv: -kv[1])[:30]:
            print(f"{ns / own:6.2%} {ns / files / 1e3:6.3f}  [{kind}] {sym[:110]}")
        print("```")

def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "poll":
        cmd_poll(*args)
    elif cmd == "fetchrow":
        cmd_fetchrow(args)
    elif cmd == "list":
        cmd_list(*args)
    elif cmd == "profile":
        cmd_profile(*args)
    elif cmd == "report":
        cmd_report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
