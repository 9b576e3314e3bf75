#!/usr/bin/env python3
# SPDX-License-Identifier: MPL-2.0
"""Records and reports the runs of scripts/bench.sh (standard library only).

    report.py meta PARAMS-JSON COMMIT           one line: machine and parameters
    report.py record KEY-JSON PUB TIME SUB      one line: a run (publisher, GNU time, subscriber)
    report.py stages KEY-JSON PUB RELAY RELAYED RECEIVED LOG
                                                one line: W6's latency by stage, each message
                                                followed from its due time to the subscriber
    report.py brief < LINE                      a one-line summary of a run, for the log
    report.py report results.jsonl              the Markdown tables and the targets

CPU figures are the publisher's own getrusage (user + system, all threads) over the
streaming phase; `process CPU` adds start-up and teardown (GNU time). Rows measured
several times (REPEAT) report the median of each figure.
"""

import json
import math
import os
import platform
import statistics
import sys
import time

MIB = 1024 * 1024


def load(path):
    with open(path, encoding="utf-8") as f:
        text = f.read().strip()
    if not text:
        return {}
    # GNU time may put a "Command exited with non-zero status" line first.
    return json.loads(text.splitlines()[-1])


def cmd_meta(params, commit):
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    print(json.dumps({
        "meta": {
            "params": json.loads(params),
            "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M %Z"),
            "cpu": cpu,
            "cores": os.cpu_count(),
            "kernel": platform.release(),
            "load_at_start": os.getloadavg(),
        }
    }))


def cmd_record(key, pub, tim, sub):
    print(json.dumps({
        "key": json.loads(key),
        "pub": load(pub),
        "time": load(tim),
        "sub": load(sub),
        "load": os.getloadavg()[0],
    }))


def quantiles_ms(values_ns):
    """p50, p99 and max of nanosecond values, in milliseconds (nearest rank)."""
    if not values_ns:
        return {"count": 0}
    values = sorted(values_ns)

    def rank(q):
        return values[min(len(values), max(1, math.ceil(q * len(values)))) - 1]

    return {"count": len(values), "p50": rank(0.50) / 1e6, "p99": rank(0.99) / 1e6,
            "max": values[-1] / 1e6}


# The stages of a message in W6's breakdown, in order: (name, from, to).
STAGES = [
    ("source to sink", "due", "sink"),
    ("sink to socket", "sink", "socket"),
    ("socket to subscriber", "socket", "received"),
    ("sink to subscriber", "sink", "received"),
    ("due to subscriber", "due", "received"),
]


def burst_profile(times):
    """The sources' frames of one frame period, taken together: how far apart the sinks
    took them (first to last sink_time), when the last reached the socket, and the sink to
    socket time by the message's place in that burst (tenths, in the order the sinks took
    them). A queue that builds while the burst comes in shows as a time that grows with
    the place."""
    by_topic = {}
    for t in times:
        by_topic.setdefault(t["topic"], []).append(t["timestamp"])
    gaps = [b - a for stamps in by_topic.values() for a, b in zip(sorted(stamps), sorted(stamps)[1:])]
    if not gaps:
        return None
    period = statistics.median(gaps)
    frames = {}
    for t in times:
        frames.setdefault(t["timestamp"] // period, []).append(t)
    full = [f for f in frames.values() if len(f) >= 0.9 * len(by_topic)]
    spread, drain, tenths = [], [], [[] for _ in range(10)]
    for frame in full:
        frame.sort(key=lambda t: t["sink"])
        first = frame[0]["sink"]
        spread.append(frame[-1]["sink"] - first)
        drain.append(max(t["socket"] for t in frame) - first)
        for place, t in enumerate(frame):
            tenths[place * 10 // len(frame)].append(t["socket"] - t["sink"])
    return {"frames": len(full), "period_ms": period / 1e6, "spread": quantiles_ms(spread),
            "drain": quantiles_ms(drain),
            "sink_to_socket_p50_by_tenth": [quantiles_ms(v).get("p50") for v in tenths]}


def cmd_stages(key, pub, relay, relayed, received, log):
    """Follows every message through its stages on one wall clock: `due` (the pipeline's
    base time + the frame's timestamp, with bench_pipeline --realtime-clock), `sink` (the
    payload's sink_time), `socket` (bench_relay read its PUBLISH), `received` (the
    subscriber). Messages are matched by topic and sink_time."""
    base = load(pub).get("base_time_ns")
    socket = {}
    with open(relayed, encoding="utf-8") as f:
        for line in f:
            topic, sink, at = line.split("\t")
            socket[(topic, int(sink))] = int(at)
    times = []
    unmatched = 0
    with open(received, encoding="utf-8") as f:
        for line in f:
            topic, timestamp, sink, at = line.split("\t")
            sink = int(sink)
            seen = socket.get((topic, sink))
            if seen is None or sink == 0:
                unmatched += 1
                continue
            due = base + int(timestamp) if base is not None else None
            times.append({"topic": topic, "timestamp": int(timestamp), "due": due, "sink": sink,
                          "socket": seen, "received": int(at)})
    stages = {}
    bursts = burst_profile(times)
    for name, start, end in STAGES:
        stages[name] = quantiles_ms([t[end] - t[start] for t in times
                                     if t[start] is not None])
    with open(log, encoding="utf-8", errors="replace") as f:
        lingers = sum("letting a batch gather" in line for line in f)
    k = json.loads(key)
    k["row"] = "breakdown"
    print(json.dumps({
        "key": k,
        "stages": stages,
        "relayed": len(socket),
        "matched": len(times),
        "unmatched": unmatched,
        "lingers": lingers,
        "bursts": bursts,
        "relay_cpu": load(relay).get("cpu"),
        "wall": load(pub).get("wall"),
        "load": os.getloadavg()[0],
        "loadavg": os.getloadavg(),
    }))


def cpu(rec):
    return rec["pub"]["cpu_user"] + rec["pub"]["cpu_sys"]


def runtime_cpu(rec):
    """CPU seconds of the connection runtime's threads (bench_pipeline's threads_cpu)."""
    threads = rec["pub"].get("threads_cpu")
    if threads is None:
        return None
    return sum(v for k, v in threads.items() if k.startswith("mqttpublish-rt"))


def cmd_brief():
    rec = json.loads(sys.stdin.readline())
    if "stages" in rec:
        print(f"{rec['matched']} messages followed, {rec['lingers']} lingers; " + ", ".join(
            f"{name} p50 {q.get('p50', float('nan')):.2f} p99 {q.get('p99', float('nan')):.2f} ms"
            for name, q in rec["stages"].items()))
        return
    if "build_ns" in rec["pub"]:
        print(f"reading the objects {rec['pub']['read_ns']} ns, building the message "
              f"{rec['pub']['build_ns']} ns")
        return
    parts = [f"cpu {cpu(rec):.3f} s", f"wall {rec['pub']['wall']:.2f} s",
             f"received {rec['sub'].get('total', 0)}",
             f"peak RSS {rec['time'].get('max_rss_kib', 0) / 1024:.0f} MiB"]
    lat = rec["sub"].get("latency_ms")
    if lat and lat.get("p50") is not None:
        parts.append(f"p50 {lat['p50']:.2f} ms p99 {lat['p99']:.2f} ms")
    print(", ".join(parts))


# --- the report -------------------------------------------------------------------------


class Runs:
    def __init__(self, records):
        self.records = records

    def select(self, **key):
        return [r for r in self.records
                if all(r["key"].get(k) == v for k, v in key.items())]

    def median(self, fn, **key):
        values = [v for v in map(fn, self.select(**key)) if v is not None]
        return statistics.median(values) if values else None


def fmt(value, spec=".2f", missing="-"):
    return missing if value is None else format(value, spec)


def ratio_text(value, spec=".2f"):
    return "-" if value is None else f"{value:{spec}}x"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def verdict(ok):
    return "**met**" if ok else "**not met**"


def sum_sinks(rec, field):
    return sum(s.get(field, 0) for s in rec["pub"].get("sinks", {}).values())


def report_w1(runs, params, targets):
    n = params["W1_N"]
    out = [f"## W1: metadata only ({n} buffers of 64x48 video, 5 objects each)", ""]
    base = runs.median(cpu, w="w1", row="baseline")
    base_rate = runs.median(lambda r: n / r["pub"]["wall"], w="w1", row="baseline")
    out.append(f"Baseline (videotestsrc ! metareplay ! fakesink): {fmt(base, '.3f')} s CPU, "
               f"{fmt(base_rate, ',.0f')} buffers/s: the most any sink can be fed.")
    out.append("")
    names = {
        "mqttpublish": "mqttpublish leaky=no",
        "mqttpublish-default": "mqttpublish (default leaky=auto)",
        "raw": "raw rumqttc (bench/raw-publisher)",
        "python": "Python: appsink + json.dumps + paho",
    }
    header = ["QoS", "publisher", "CPU s", "CPU µs/msg over baseline", "x raw",
              "runtime threads µs/msg", "wall s", "delivered", "delivered msg/s",
              "peak RSS MiB", "process CPU s"]
    rows = []
    per_msg = {}
    runtime = {}
    rate = {}
    for qos in (0, 1):
        for row in ("mqttpublish", "mqttpublish-default", "raw", "python"):
            recs = runs.select(w="w1", row=row, qos=qos)
            if not recs:
                continue
            c = runs.median(cpu, w="w1", row=row, qos=qos)
            # The raw publisher has no pipeline: all of its CPU is publishing.
            over = c if row == "raw" else (c - base if base is not None else None)
            per_msg[qos, row] = over / n * 1e6 if over is not None else None
            rate[qos, row] = runs.median(lambda r: r["sub"].get("total", 0) / r["pub"]["wall"],
                                         w="w1", row=row, qos=qos)
            runtime[qos, row] = runs.median(
                lambda r: None if runtime_cpu(r) is None else runtime_cpu(r) / n * 1e6,
                w="w1", row=row, qos=qos)
            rows.append([qos, names[row], fmt(c, ".3f"), fmt(per_msg[qos, row], ".1f"), None,
                         fmt(runtime[qos, row], ".1f"),
                         fmt(runs.median(lambda r: r["pub"]["wall"], w="w1", row=row, qos=qos)),
                         f"{min(r['sub'].get('total', 0) for r in recs)}-"
                         f"{max(r['sub'].get('total', 0) for r in recs)} of {n}",
                         fmt(rate[qos, row], ",.0f"),
                         fmt(runs.median(lambda r: r["time"]["max_rss_kib"] / 1024, w="w1", row=row, qos=qos), ".0f"),
                         fmt(runs.median(lambda r: r["time"]["user"] + r["time"]["sys"], w="w1", row=row, qos=qos))])
    for r in rows:
        key = (r[0], next(k for k, v in names.items() if v == r[1]))
        raw = per_msg.get((key[0], "raw"))
        r[4] = ratio_text(per_msg[key] / raw if raw else None)
    out.append(table(header, rows))
    out.append("")
    out.append("`delivered` is the range over the repetitions; the others are medians. "
               "`x raw` is CPU per message over the baseline divided by the raw publisher's CPU per message. "
               "`runtime threads` is the CPU of the connection runtime's threads alone (`mqttpublish-rt`, "
               "from /proc schedstat), per message: publishing apart from building.")
    out.append("")
    build = runs.median(lambda r: r["pub"]["build_ns"] / 1e3, w="w1", row="build")
    read = runs.median(lambda r: r["pub"]["read_ns"] / 1e3, w="w1", row="build")
    if build is not None:
        out.append(f"Where mqttpublish's cost per message goes. Building one message alone "
                   f"(`examples/message_build_bench.rs`: the element's assembler on W1's buffer, "
                   f"best of 5, no publishing) costs {build:.2f} µs, of which {read:.2f} µs is "
                   f"reading the five ROI metas; the rest is writing the gvametaconvert JSON. "
                   f"The raw publisher sends a ready-made payload and builds nothing.")
        for qos in (0, 1):
            m, raw, rt = (per_msg.get((qos, "mqttpublish")), per_msg.get((qos, "raw")),
                          runtime.get((qos, "mqttpublish")))
            if m is None or not raw or rt is None:
                continue
            out.append(f"- QoS {qos}: {m:.1f} µs over the baseline = building {build:.2f} µs "
                       f"({build / raw:.2f}x raw's whole cost) + the runtime threads "
                       f"{rt:.1f} µs ({rt / raw:.2f}x raw) + the rest, {m - build - rt:.1f} µs: "
                       f"the streaming thread's queueing and waking of the runtime, its running "
                       f"slower beside a busy second core, and the baseline's variation between "
                       f"runs.")
        out.append("")
    for qos in (0, 1):
        m, raw, py = per_msg.get((qos, "mqttpublish")), per_msg.get((qos, "raw")), per_msg.get((qos, "python"))
        if m is not None and raw:
            # Within twice the raw client's cost at QoS 0; at QoS 1, where the
            # acknowledgements cost both alike, within 1.5 times.
            limit = 2 if qos == 0 else 1.5
            targets.append((f"W1 QoS {qos}: mqttpublish CPU/msg over baseline <= {limit}x raw rumqttc",
                            f"{m / raw:.2f}x", m / raw <= limit))
        if m and py is not None:
            targets.append((f"W1 QoS {qos}: >= 10x less CPU/msg than Python",
                            f"{py / m:.1f}x less", py / m >= 10))
        # "Delivered rate" read two ways: throughput, and the share of messages that
        # arrive. mqttpublish's throughput is capped by the pipeline feeding it.
        mr, rr = rate.get((qos, "mqttpublish")), rate.get((qos, "raw"))
        if mr is not None and rr:
            targets.append((f"W1 QoS {qos}: delivered msg/s >= 80% of raw",
                            f"{100 * mr / rr:.0f}% (the pipeline alone runs at "
                            f"{100 * base_rate / rr:.0f}% of raw's rate)", mr / rr >= 0.8))
        share = {}
        for row in ("mqttpublish", "mqttpublish-default", "raw"):
            recs = runs.select(w="w1", row=row, qos=qos)
            if recs:
                share[row] = min(r["sub"].get("total", 0) for r in recs) / n
        if share.get("raw"):
            for row, label in (("mqttpublish", "leaky=no"), ("mqttpublish-default", "default leaky")):
                if row in share:
                    targets.append((f"W1 QoS {qos}: share of messages delivered ({label}) >= 80% of raw's",
                                    f"{100 * share[row] / share['raw']:.0f}%",
                                    share[row] / share["raw"] >= 0.8))
    return out


def report_w2(runs, params, targets):
    n = params["W2_N"]
    out = [f"## W2: frames ({n} frames of 1280x720, publish-frame=true, JPEG quality 85)", ""]
    names = {
        "baseline": "baseline: videotestsrc ! metareplay ! fakesink",
        "jpegenc": "jpegenc ! mqttpublish",
        "internal": "mqttpublish encoding (libjpeg-turbo)",
        "python": "Python: appsink + cv2.imencode + base64 + paho",
    }
    header = ["format", "pipeline", "CPU s", "CPU ms/frame", "ms/frame over baseline",
              "x internal", "wall s", "delivered", "KiB/msg", "peak RSS MiB"]
    rows = []
    for fmt_name in ("I420", "BGRx"):
        base = runs.median(cpu, w="w2", row="baseline", format=fmt_name)
        over = {}
        for row in ("baseline", "jpegenc", "internal", "python"):
            recs = runs.select(w="w2", row=row, format=fmt_name)
            if not recs:
                continue
            c = runs.median(cpu, w="w2", row=row, format=fmt_name)
            over[row] = (c - base) / n * 1e3 if base is not None else None
            delivered = [r["sub"].get("total", 0) for r in recs]
            kib = runs.median(lambda r: r["sub"].get("bytes", 0) / max(r["sub"].get("total", 0), 1) / 1024,
                              w="w2", row=row, format=fmt_name)
            rows.append([fmt_name, names[row], fmt(c, ".3f"), fmt(c / n * 1e3),
                         "-" if row == "baseline" else fmt(over[row]), row,
                         fmt(runs.median(lambda r: r["pub"]["wall"], w="w2", row=row, format=fmt_name)),
                         "-" if row == "baseline" else f"{min(delivered)}-{max(delivered)} of {n}",
                         "-" if row == "baseline" else fmt(kib, ".0f"),
                         fmt(runs.median(lambda r: r["time"]["max_rss_kib"] / 1024, w="w2", row=row, format=fmt_name), ".0f")])
        internal = over.get("internal")
        for r in rows:
            if r[0] == fmt_name:
                row = r[5]
                r[5] = "-" if row == "baseline" or not internal else ratio_text(over[row] / internal)
        if internal and over.get("jpegenc"):
            targets.append((f"W2 {fmt_name}: internal encoding CPU/frame <= jpegenc path",
                            f"{internal / over['jpegenc']:.2f}x jpegenc", internal <= over["jpegenc"]))
        if internal and over.get("python") is not None:
            targets.append((f"W2 {fmt_name}: >= 3x less CPU/frame than Python",
                            f"{over['python'] / internal:.1f}x less", over["python"] / internal >= 3))
    out.append(table(header, rows))
    out.append("")
    out.append("CPU per frame over the baseline is the cost of encoding and publishing; "
               "`x internal` divides it by mqttpublish's own.")
    out.append("")
    return out


def report_w3(runs, params, targets):
    out = [f"## W3: latency (live 30 fps, {params['W3_SECONDS']} s, QoS {params['W3_QOS']}, "
           "5 objects per frame)", ""]
    out.append("Latency = subscriber receive time - `sink_time` (mqttpublish add-sink-time=true: when the "
               "sink got the buffer; raw publisher: just before publish()), same wall clock.")
    out.append("")
    header = ["payload", "publisher", "received", "p50 ms", "p99 ms", "max ms", "mean ms",
              "CPU % of a core"]
    rows = []
    p99 = {}
    for payload in ("metadata", "720p frame"):
        for row in ("mqttpublish", "raw"):
            recs = runs.select(w="w3", row=row, payload=payload)
            if not recs:
                continue
            r = recs[0]
            lat = r["sub"].get("latency_ms", {})
            p99[payload, row] = lat.get("p99")
            rows.append([payload, row, r["sub"].get("total", 0), fmt(lat.get("p50")),
                         fmt(lat.get("p99")), fmt(lat.get("max")), fmt(lat.get("mean")),
                         fmt(100 * cpu(r) / r["pub"]["wall"], ".1f")])
    out.append(table(header, rows))
    out.append("")
    m, raw = p99.get(("metadata", "mqttpublish")), p99.get(("metadata", "raw"))
    if m is not None and raw is not None:
        targets.append(("W3 metadata only: mqttpublish p99 within 1 ms of raw p99",
                        f"{m - raw:+.2f} ms ({m / raw:.2f}x)", m - raw <= 1.0))
    return out


def report_w4(runs, params, targets):
    out = [f"## W4: {params['W4_BRANCHES']} live 30 fps streams in one process "
           f"({params['W4_SECONDS']} s, QoS 1)", ""]
    base = runs.select(w="w4", row="baseline")
    mq = runs.select(w="w4", row="mqttpublish")
    if not base or not mq:
        return out
    b, m = base[0], mq[0]
    share = 100 * (cpu(m) - cpu(b)) / m["pub"]["wall"]
    queued = sum_sinks(m, "messages-queued")
    acked = sum_sinks(m, "messages-acknowledged")
    dropped = sum_sinks(m, "messages-dropped")
    received = m["sub"].get("total", 0)
    topics = m["sub"].get("topics", {})
    mismatched = []
    for name, stats in m["pub"].get("sinks", {}).items():
        topic = f"bench/w4/{name[1:]}"
        if topics.get(topic, 0) != stats.get("messages-queued"):
            mismatched.append(f"{topic}: {topics.get(topic, 0)} of {stats.get('messages-queued')}")
    header = ["pipeline", "CPU s", "wall s", "CPU % of a core", "peak RSS MiB"]
    rows = [[name, fmt(cpu(r), ".2f"), fmt(r["pub"]["wall"], ".1f"),
             fmt(100 * cpu(r) / r["pub"]["wall"], ".1f"), fmt(r["time"]["max_rss_kib"] / 1024, ".0f")]
            for name, r in (("16 x fakesink" if params["W4_BRANCHES"] == 16 else "fakesinks", b),
                            ("mqttpublish qos=1", m))]
    out.append(table(header, rows))
    out.append("")
    out.append(f"Publishing uses **{share:.1f}%** of one core ({share / params['W4_BRANCHES']:.2f}% per stream). "
               f"Messages: {queued} made, {acked} acknowledged by the broker, {dropped} dropped by the sinks, "
               f"{received} received by the subscriber; per topic, received = made for "
               f"{len(m['pub'].get('sinks', {})) - len(mismatched)} of {len(m['pub'].get('sinks', {}))} topics"
               + (f" (differ: {', '.join(mismatched[:4])})" if mismatched else "") + ".")
    out.append("")
    targets.append((f"W4: publishing {params['W4_BRANCHES']} x 30 fps < 10% of one core",
                    f"{share:.1f}%", share < 10))
    lost = queued - received
    targets.append(("W4: nothing lost at QoS 1", f"{lost} lost of {queued}, {dropped} dropped",
                    lost == 0 and dropped == 0 and not mismatched))
    return out


def outage_summary(rec):
    pub = rec["pub"]
    timeline = pub.get("timeline", [])
    start = pub.get("start_unix", 0)
    down = rec["key"].get("down_at")
    up = rec["key"].get("up_at")
    s = {"max_queue_bytes": max((t["queue_bytes"] for t in timeline), default=0)}
    if down is None or up is None:
        return s
    down_t, up_t = down - start, up - start
    before = [t for t in timeline if t["t"] <= down_t]
    s["rss_before_kib"] = max((t["rss_kib"] for t in before), default=0)
    reconnected = next((t for t in timeline if t["t"] >= up_t and t["connected"]), None)
    if reconnected:
        s["reconnect_after"] = reconnected["t"] - up_t
        drained = next((t for t in timeline if t["t"] >= reconnected["t"] and t["queue_depth"] == 0), None)
        if drained:
            s["drained_after"] = drained["t"] - reconnected["t"]
    return s


def report_w5(runs, params, targets):
    out = [f"## W5: {params['W5_BRANCHES']} cameras in one process against a NATS cluster "
           f"({params['W5_SECONDS']} s, 30 fps each, QoS 1)", ""]
    base = runs.select(w="w5", row="baseline")
    mq = runs.select(w="w5", row="mqttpublish")
    if not base or not mq:
        return out
    b, m = base[0], mq[0]
    share = 100 * (cpu(m) - cpu(b)) / m["pub"]["wall"]
    queued = sum_sinks(m, "messages-queued")
    acked = sum_sinks(m, "messages-acknowledged")
    dropped = sum_sinks(m, "messages-dropped")
    received = m["sub"].get("total", 0)
    lat = m["sub"].get("latency_ms", {})
    header = ["pipeline", "CPU s", "wall s", "CPU % of a core", "threads", "peak RSS MiB"]
    rows = [[name, fmt(cpu(r), ".2f"), fmt(r["pub"]["wall"], ".1f"),
             fmt(100 * cpu(r) / r["pub"]["wall"], ".1f"), str(r["pub"].get("threads_max", "-")),
             fmt(r["time"]["max_rss_kib"] / 1024, ".0f")]
            for name, r in ((f"{params['W5_BRANCHES']} x fakesink", b),
                            (f"{params['W5_BRANCHES']} x mqttpublish qos=1", m))]
    out.append(table(header, rows))
    out.append("")
    out.append(f"Publishing uses **{share:.1f}%** of one core ({share / params['W5_BRANCHES']:.2f}% per camera), "
               f"{m['pub'].get('threads_max', 0) - b['pub'].get('threads_max', 0)} threads more than the fakesinks "
               f"(the connection runtime's threads, whatever the number of sinks). Latency from the sink to a subscriber on another node: "
               f"p50 {fmt(lat.get('p50'))} ms, p99 {fmt(lat.get('p99'))} ms, max {fmt(lat.get('max'))} ms. "
               f"Messages: {queued} made, {acked} acknowledged, {dropped} dropped by the sinks, "
               f"{received} received by the subscriber.")
    out.append("")
    lost = queued - received
    targets.append(("W5: nothing lost at QoS 1 (64 cameras, NATS cluster)",
                    f"{lost} lost of {queued}, {dropped} dropped", lost <= 0 and dropped == 0))
    return out


def report_spool(runs, params, targets):
    n = params["W1_N"]
    out = ["## Spool: the disk spool (spool-location)", ""]
    base = runs.median(cpu, w="w1", row="baseline")
    header = ["QoS", "spool-sync", "CPU s", "CPU µs/msg over baseline", "x the same row without spool",
              "delivered", "disk bytes per message / message bytes"]
    rows = []
    for qos in (0, 1):
        without = runs.median(cpu, w="w1", row="mqttpublish", qos=qos)
        per_without = (without - base) / n * 1e6 if without is not None and base is not None else None
        for sync in ("interval", "always"):
            recs = runs.select(w="spool", row=f"w1-{sync}", qos=qos)
            if not recs:
                continue
            c = runs.median(cpu, w="spool", row=f"w1-{sync}", qos=qos)
            per = (c - base) / n * 1e6 if base is not None else None
            ratio = per / per_without if per is not None and per_without else None
            disk = runs.median(lambda r: sum_sinks(r, "spool-bytes-written") / max(sum_sinks(r, "bytes-sent"), 1),
                               w="spool", row=f"w1-{sync}", qos=qos)
            rows.append([qos, sync, fmt(c, ".3f"), fmt(per, ".1f"), ratio_text(ratio),
                         f"{min(r['sub'].get('total', 0) for r in recs)}-"
                         f"{max(r['sub'].get('total', 0) for r in recs)} of {n}",
                         ratio_text(disk, ".3f")])
            if sync == "interval" and ratio is not None:
                targets.append((f"Spool: W1 QoS {qos} CPU/msg with spool-sync=interval <= 1.5x without",
                                f"{ratio:.2f}x", ratio <= 1.5))
            if sync == "interval" and disk is not None:
                targets.append((f"Spool: W1 QoS {qos} disk bytes per message <= 1.1x the message",
                                f"{disk:.3f}x", disk <= 1.1))
    if rows:
        out.append(table(header, rows))
        out.append("")
        out.append("W1's workload (64x48 video, 5 objects a frame) with `spool-location` and `leaky=no`, "
                   "against W1's `mqttpublish leaky=no` row of the same run (`-` when W1 did not run). "
                   "Disk bytes: `spool-bytes-written` over `bytes-sent` (the payloads written to the socket).")
        out.append("")
    replay = runs.select(w="spool", row="replay")
    if replay:
        r = replay[0]
        backlog = r["key"]["backlog"]
        timeline = r["pub"].get("timeline", [])
        drained = next((t for t in timeline if t.get("replayed", 0) >= backlog), None)
        replayed_end = sum_sinks(r, "spool-replayed")
        live_rate = 30
        if drained:
            rate = backlog / drained["t"] if drained["t"] > 0 else None
            when = f"drained in {drained['t']:.1f} s"
        else:
            rate = replayed_end / r["pub"]["wall"]
            when = f"not drained within {r['pub']['wall']:.0f} s ({replayed_end} of {backlog} sent)"
        lat = r["sub"].get("latency_ms", {})
        out.append(f"Outage replay: {params.get('SPOOL_CAMERAS')} cameras x 30 fps x "
                   f"{params.get('SPOOL_OUTAGE_SECONDS')} s of 720p frames ({backlog} messages) spooled with no "
                   f"broker, then published by a live 720p camera on the same spool (QoS 1, "
                   f"spool-replay-share=50): backlog {when}, **{fmt(rate, ',.0f')} msg/s**, "
                   f"{ratio_text(rate / live_rate if rate else None, '.1f')} the camera's 30 msg/s; the live "
                   f"frames' latency p50 {fmt(lat.get('p50'))} ms, p99 {fmt(lat.get('p99'))} ms, "
                   f"max {fmt(lat.get('max'))} ms; {r['sub'].get('total', 0)} messages received.")
        out.append("")
        if rate is not None:
            targets.append(("Spool: an outage's backlog drains at >= 5x the live rate",
                            f"{rate / live_rate:.1f}x ({when})", drained is not None and rate / live_rate >= 5))
        if lat:
            targets.append(("Spool: live latency during the replay < 1 s (p99)",
                            f"p99 {lat['p99']:.0f} ms", lat["p99"] < 1000))
    return out


def fairness(latency):
    """Each stream's p99: the median stream's and the worst's, '-' when not measured."""
    per = latency.get("topic_p99")
    if not per:
        return "-"
    return f"{fmt(per.get('median'))} / {fmt(per.get('worst'))}"


def report_w6(runs, params, targets):
    phases = ("frames due at phases spread over the period" if str(params.get("W6_SPREAD", 0)) == "1"
              else "sources started together")
    out = [f"## W6: many sinks on the shared connection runtime ({params['W6_SECONDS']} s, "
           f"64x48 at 30 fps each, {phases}, QoS 1, local mosquitto)", ""]
    header = ["sinks", "connections", "fakesinks CPU % of a core", "mqttpublish CPU % of a core",
              "publishing % of a core", "per sink", "threads fakesinks / mqttpublish",
              "peak RSS MiB fakesinks / mqttpublish", "made", "dropped", "received",
              "p50 ms", "p99 ms", "p99 of the median / worst stream ms"]
    rows = []
    rows_of = (("mqttpublish", "one per sink", ""), ("shared", "one shared", ", shared-connection"))
    for n, (row, connections, which) in ((n, r) for n in sorted({r["key"]["branches"] for r in runs.select(w="w6")})
                                         for r in rows_of):
        base = runs.select(w="w6", row="baseline", branches=n)
        mq = runs.select(w="w6", row=row, branches=n)
        if not base or not mq:
            continue
        b, m = base[0], mq[0]
        share = 100 * (cpu(m) - cpu(b)) / m["pub"]["wall"]
        queued = sum_sinks(m, "messages-queued")
        dropped = sum_sinks(m, "messages-dropped")
        received = m["sub"].get("total", 0)
        lat = m["sub"].get("latency_ms", {})
        rows.append([str(n), connections, fmt(100 * cpu(b) / b["pub"]["wall"], ".1f"),
                     fmt(100 * cpu(m) / m["pub"]["wall"], ".1f"), fmt(share, ".1f"),
                     fmt(share / n, ".2f"),
                     f"{b['pub'].get('threads_max', '-')} / {m['pub'].get('threads_max', '-')}",
                     f"{b['time']['max_rss_kib'] / 1024:.0f} / {m['time']['max_rss_kib'] / 1024:.0f}",
                     str(queued), str(dropped), str(received),
                     fmt(lat.get("p50")), fmt(lat.get("p99")), fairness(lat)])
        lost = queued - received
        targets.append((f"W6: nothing lost at QoS 1 ({n} sinks{which})",
                        f"{lost} lost of {queued}, {dropped} dropped", lost <= 0 and dropped == 0))
    out.append(table(header, rows))
    out.append("")
    out.append("Threads: the fakesink pipeline has one streaming thread per source; mqttpublish adds "
               "the connection runtime's threads (GST_MQTTPUBLISH_THREADS, 2 by default), not one per sink.")
    out.append("")
    out += report_w6_stages(runs)
    return out


def report_w6_stages(runs):
    breakdowns = sorted(runs.select(w="w6", row="breakdown"), key=lambda r: r["key"]["branches"])
    if not breakdowns:
        return []
    out = ["### W6: where the latency goes", ""]
    header = ["stage"] + [f"{r['key']['branches']} sinks: p50 / p99 / max ms" for r in breakdowns]
    rows = []
    for name, _, _ in STAGES:
        row = [name]
        for r in breakdowns:
            q = r["stages"].get(name, {})
            row.append(f"{fmt(q.get('p50'))} / {fmt(q.get('p99'))} / {fmt(q.get('max'))}")
        rows.append(row)
    out.append(table(header, rows))
    out.append("")
    for r in breakdowns:
        n = r["key"]["branches"]
        through = runs.select(w="w6", row="stages", branches=n)
        cpu_text = ""
        if through:
            t = through[0]
            cpu_text = f", the sinks' process at {100 * cpu(t) / t['pub']['wall']:.1f}% of a core"
        if r.get("relay_cpu") is not None and r.get("wall"):
            cpu_text += f", the relay at {100 * r['relay_cpu'] / r['wall']:.1f}%"
        out.append(f"- {n} sinks: {r['matched']} messages followed ({r['unmatched']} not matched, "
                   f"{r['relayed']} relayed); the mover let a batch gather {r['lingers']} times; "
                   f"load average {' / '.join(f'{x:.1f}' for x in r['loadavg'])} (1 / 5 / 15 min) "
                   f"at the end{cpu_text}.")
    for r in breakdowns:
        b = r.get("bursts")
        if not b:
            continue
        by_tenth = " ".join(fmt(v, ".1f") for v in b["sink_to_socket_p50_by_tenth"])
        out.append(f"- {r['key']['branches']} sinks, each frame period ({b['period_ms']:.1f} ms) "
                   f"taken together ({b['frames']} periods): the sinks took its frames within "
                   f"{fmt(b['spread'].get('p50'))} ms (p50, p99 {fmt(b['spread'].get('p99'))}), the "
                   f"last reached the socket {fmt(b['drain'].get('p50'))} ms after the first sink "
                   f"took its frame (p99 {fmt(b['drain'].get('p99'))}); sink to socket p50 by "
                   f"place in that burst, first tenth to last: {by_tenth} ms.")
    out.append("")
    out.append("The same sinks as the mqttpublish row, through `bench_relay` (a TCP relay in front of "
               "mosquitto noting when each PUBLISH reaches it), on a pipeline clock in wall-clock time. "
               "Every message is followed through its stages, and each stage's quantiles are over the "
               "messages (the stages' p99 do not add up). *source to sink*: when the sink took the "
               "buffer (`sink_time`) after the frame was due (base time + its timestamp): the "
               "streaming threads' scheduling. *sink to socket*: the sink's queue, the connection "
               "runtime's tasks and the write, up to the relay's read (its own wake-up included). "
               "*socket to subscriber*: the relay's forwarding, mosquitto and the subscriber.")
    out.append("")
    return out


def report_mem(runs, params, targets):
    out = [f"## Memory: broker down for {params['OUTAGE_SECONDS']} s, 720p frames at 30 fps "
           f"(max-queued-bytes={params['MEM_QUEUE_BYTES'] // MIB} MiB, QoS 1)", ""]
    up = runs.select(w="mem", row="broker-up")
    down = runs.select(w="mem", row="outage")
    if not up or not down:
        return out
    u, d = up[0], down[0]
    su, sd = outage_summary(u), outage_summary(d)
    header = ["run", "peak RSS MiB", "RSS before outage MiB", "max queue MiB", "made", "published",
              "dropped (queue full / disconnected)", "received", "reconnected after broker returned",
              "queue empty after reconnect", "queue at end"]
    rows = []
    for name, r, s in (("broker up", u, su), ("outage", d, sd)):
        rows.append([name, fmt(r["pub"]["peak_rss_kib"] / 1024, ".0f"),
                     fmt(s["rss_before_kib"] / 1024, ".0f") if "rss_before_kib" in s else "-",
                     fmt(s["max_queue_bytes"] / MIB, ".1f"),
                     sum_sinks(r, "messages-queued"), sum_sinks(r, "messages-published"),
                     f"{sum_sinks(r, 'dropped-queue-full')} / {sum_sinks(r, 'dropped-disconnected')}",
                     r["sub"].get("total", 0),
                     fmt(s.get("reconnect_after"), ".1f") + " s" if "reconnect_after" in s else "-",
                     fmt(s.get("drained_after"), ".1f") + " s" if "drained_after" in s else "-",
                     sum_sinks(r, "queue-depth")])
    out.append(table(header, rows))
    out.append("")
    growth = (d["pub"]["peak_rss_kib"] - u["pub"]["peak_rss_kib"]) * 1024
    bound = params["MEM_QUEUE_BYTES"] + params["MEM_SLACK_MIB"] * MIB
    out.append(f"Peak RSS grew by {growth / MIB:.1f} MiB over the broker-up run; the bound is "
               f"max-queued-bytes + {params['MEM_SLACK_MIB']} MiB = {bound / MIB:.0f} MiB. "
               "Reconnection waits for the next backoff attempt (1, 2, 4 ... 30 s).")
    out.append("")
    targets.append(("Memory: outage peak RSS growth <= max-queued-bytes + slack",
                    f"{growth / MIB:.1f} MiB of {bound / MIB:.0f} MiB ({growth / bound:.2f}x)", growth <= bound))
    drained = "drained_after" in sd and sum_sinks(d, "queue-depth") == 0
    targets.append(("Memory: the queue drains after the broker returns",
                    f"{fmt(sd.get('drained_after'), '.1f')} s after reconnecting" if drained else "not drained",
                    drained))
    return out


def cmd_report(path):
    meta = {}
    records = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            if "meta" in rec:
                meta = rec["meta"]
            else:
                records.append(rec)
    params = meta.get("params", {})
    runs = Runs(records)
    targets = []
    loads = [r["load"] for r in records if "load" in r]
    out = ["# Benchmark results", ""]
    out.append(f"`scripts/bench.sh` on {meta.get('date', '?')}, commit {meta.get('commit', '?')}: "
               f"{meta.get('cpu', '?')}, {meta.get('cores', '?')} cores, Linux {meta.get('kernel', '?')}. "
               f"One mosquitto on loopback for every row. Load average during the runs "
               f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} (the machine is shared with "
               "other work, so absolute times are noisy: compare rows and ratios). "
               f"Parameters: {', '.join(f'{k}={v}' for k, v in params.items())}.")
    out.append("")
    sections = []
    if runs.select(w="w1"):
        sections += report_w1(runs, params, targets)
    if runs.select(w="w2"):
        sections += report_w2(runs, params, targets)
    if runs.select(w="w3"):
        sections += report_w3(runs, params, targets)
    if runs.select(w="w4"):
        sections += report_w4(runs, params, targets)
    if runs.select(w="mem"):
        sections += report_mem(runs, params, targets)
    if runs.select(w="spool"):
        sections += report_spool(runs, params, targets)
    if runs.select(w="w5"):
        sections += report_w5(runs, params, targets)
    if runs.select(w="w6"):
        sections += report_w6(runs, params, targets)
    out.append("## Targets")
    out.append("")
    out.append(table(["target", "measured", "verdict"], [[t, m, verdict(ok)] for t, m, ok in targets]))
    out.append("")
    out += sections
    print("\n".join(out))


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    command, args = sys.argv[1], sys.argv[2:]
    if command == "meta" and len(args) == 2:
        cmd_meta(*args)
    elif command == "record" and len(args) == 4:
        cmd_record(*args)
    elif command == "stages" and len(args) == 6:
        cmd_stages(*args)
    elif command == "brief":
        cmd_brief()
    elif command == "report" and len(args) == 1:
        cmd_report(*args)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
