#!/usr/bin/env python3
"""Markdown tables from stampede-bench JSON lines (one per run), brokers side by side, with
Stampede's ratio to the best other broker. Usage: table.py results.jsonl [more.jsonl ...]"""
import json
import sys

HIGHER, LOWER = 1, -1


def key_and_figures(r):
    s = r.get("scenario")
    t = r.get("transport", "?")
    if s == "fanout":
        k = f"fanout 1->{r['subscribers']} {r['size']} B {t}"
        lat = r.get("latency", {})
        return k, [
            ("delivered/s", r.get("delivered_per_s"), HIGHER),
            ("published/s", r.get("published_per_s"), HIGHER),
            ("delivery ratio", r.get("delivery_ratio"), HIGHER),
            ("p99 us", lat.get("p99_us"), LOWER),
            ("bench ns/msg", r.get("bench", {}).get("cpu_ns_per_msg"), None),
        ]
    if s == "latency":
        k = f"latency {int(r['rate_target'])}/s {r['size']} B {t}"
        lat = r.get("latency", {})
        return k, [
            ("achieved/s", r.get("published_per_s"), HIGHER),
            ("p50 us", lat.get("p50_us"), LOWER),
            ("p99 us", lat.get("p99_us"), LOWER),
            ("p99.9 us", lat.get("p999_us"), LOWER),
            ("max us", lat.get("max_us"), LOWER),
        ]
    if s == "queue":
        mode = "persistent+receipts" if r.get("persistent") else "transient"
        k = f"queue {r['producers']}p/{r['consumers']}c {mode} ack={r['ack']} {r['size']} B {t}"
        lat = r.get("latency", {})
        return k, [
            ("sent/s", r.get("sent_per_s"), HIGHER),
            ("consumed/s", r.get("consumed_per_s"), HIGHER),
            ("lost", r.get("lost"), None),
            ("dup", r.get("duplicates"), None),
            ("p99 us", lat.get("p99_us"), LOWER),
        ]
    if s == "connections":
        k = f"connections {r.get('attempted')} {t} hb={r.get('heart_beat')}"
        return k, [
            ("connected", r.get("connected"), HIGHER),
            ("set-ups/s", r.get("setups_per_s"), HIGHER),
            ("RSS B/conn", r.get("broker_rss_bytes_per_conn"), LOWER),
            ("reach-all ms", r.get("reach_all_ms"), LOWER),
            ("dropped", r.get("dropped_while_held"), None),
        ]
    return None, []


def fmt(v):
    if v is None:
        return "-"
    if isinstance(v, float):
        if v >= 1000:
            return f"{v:,.0f}"
        if v == int(v) and v >= 10:
            return f"{int(v)}"
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def main(paths):
    rows = {}  # key -> figure -> broker -> value
    order = []
    dirs = {}
    brokers = []
    errors = []
    for p in paths:
        for line in open(p):
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            b = r.get("broker") or "?"
            if b not in brokers:
                brokers.append(b)
            if r.get("error"):
                errors.append(f"{b} {r.get('scenario', '?')} {r.get('transport', '')}: {r['error']}")
            k, figs = key_and_figures(r)
            if k is None:
                continue
            if k not in rows:
                rows[k] = {}
                order.append(k)
            for name, v, d in figs:
                rows[k].setdefault(name, {})[b] = v
                dirs[(k, name)] = d
    brokers.sort(key=lambda b: b != "stampede")  # Stampede first, the others as met
    # "floor" is the forwarding floor (bench/src/bin/forwarding-floor.rs): a reference for
    # what the machine allows, not a peer to compare against.
    others = [b for b in brokers if b not in ("stampede", "floor")]
    head = ["scenario", "figure"] + brokers
    if "stampede" in brokers and others:
        head.append("stampede vs best other")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for k in order:
        for name, per in rows[k].items():
            cells = [k, name] + [fmt(per.get(b)) for b in brokers]
            if len(head) > len(cells):
                d = dirs[(k, name)]
                s = per.get("stampede")
                vals = [per.get(b) for b in others if isinstance(per.get(b), (int, float))]
                ratio = "-"
                if d is not None and isinstance(s, (int, float)) and vals:
                    if d == HIGHER:
                        best = max(vals)
                        ratio = f"{s / best:.2f}x" if best > 0 else "-"
                    else:
                        best = min(vals)
                        ratio = f"{best / s:.2f}x better" if s > 0 else "-"
                cells.append(ratio)
            print("| " + " | ".join(cells) + " |")
    if errors:
        print("\nErrors reported by runs:")
        for e in errors:
            print(f"- {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
