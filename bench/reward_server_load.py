"""Load test of a reward server (``align rm serve``) on loopback; prints one JSON line.

    python bench/reward_server_load.py --model DIR                     # starts its own server
    python bench/reward_server_load.py --url http://127.0.0.1:8000/score [--token T]

C client threads each send R requests of P (prompt, completion) pairs drawn from a pool of 32;
every request carries a unique id. Every answer is checked: the echoed id, the number of scores,
and each score against the pool's reference score (the pool scored once, in a single request, before
the load), so answers mixed between batched requests or returned out of order are caught. Every
``--malformed-every``-th request of a client is preceded by a malformed body that must get a 400.
Reported: answered / lost / duplicated / wrong counts, p50 / p99 / max latency, requests per
second, and the server's own counters from ``/health``. ``--max-batch 1`` starts the server
without cross-request batching (each request scored alone), the peer to compare with.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

POOL = [
    (f"问题{k}：请解释一下市盈率与市净率的区别。", "市盈率是股价与每股收益之比。" * (1 + k % 4))
    for k in range(32)
]


def _post(url: str, body: bytes, token: str | None, timeout: float) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _client(c: int, args, reference: list[float], out: dict, lock: threading.Lock) -> None:
    for r in range(args.requests):
        if args.malformed_every and r % args.malformed_every == 0:
            status, _ = _post(args.url, b'{"prompts": [', args.token, args.timeout)
            with lock:
                out["malformed_sent"] += 1
                out["malformed_400"] += status == 400
        picks = [(c * 7 + r * 3 + j) % len(POOL) for j in range(args.pairs)]
        rid = f"{c}-{r}"
        body = {
            "id": rid,
            "prompts": [POOL[i][0] for i in picks],
            "completions": [POOL[i][1] for i in picks],
        }
        started = time.perf_counter()
        try:
            status, answer = _post(args.url, json.dumps(body).encode(), args.token, args.timeout)
        except OSError:
            status, answer = 0, {}
        latency = time.perf_counter() - started
        ok = (
            status == 200
            and len(answer.get("scores", [])) == len(picks)
            and all(abs(s - reference[i]) < 1e-4 for s, i in zip(answer["scores"], picks))
        )
        with lock:
            out["latencies"].append(latency)
            if status != 200:
                continue
            out["seen"][answer.get("id")] = out["seen"].get(answer.get("id"), 0) + 1
            out["answered"] += 1
            out["wrong"] += not ok or answer.get("id") != rid


def run_load(args) -> dict:
    status, answer = _post(
        args.url,
        json.dumps({"prompts": [p for p, _ in POOL], "completions": [c for _, c in POOL]}).encode(),
        args.token,
        args.timeout,
    )
    if status != 200:
        raise SystemExit(f"reference request failed: {status} {answer}")
    reference = answer["scores"]
    out = {"latencies": [], "seen": {}, "answered": 0, "wrong": 0}
    out.update(malformed_sent=0, malformed_400=0)
    lock = threading.Lock()
    threads = [
        threading.Thread(target=_client, args=(c, args, reference, out, lock))
        for c in range(args.clients)
    ]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    sent = args.clients * args.requests
    lat = sorted(out["latencies"])
    health_url = args.url.rsplit("/", 1)[0] + "/health"
    with urllib.request.urlopen(health_url, timeout=args.timeout) as response:
        health = json.loads(response.read())
    return {
        "bench": "reward_server_load",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "pairs_per_request": args.pairs,
        "sent": sent,
        "answered": out["answered"],
        "lost": sent - len(out["seen"]),
        "duplicated": sum(n - 1 for n in out["seen"].values()),
        "wrong": out["wrong"],
        "malformed_sent": out["malformed_sent"],
        "malformed_400": out["malformed_400"],
        "p50_ms": round(1000 * statistics.median(lat), 2),
        "p99_ms": round(1000 * lat[min(len(lat) - 1, int(0.99 * len(lat)))], 2),
        "max_ms": round(1000 * lat[-1], 2),
        "requests_per_s": round(sent / wall, 1),
        "wall_s": round(wall, 2),
        "server": {k: health.get(k) for k in ("requests", "samples", "batches", "largest_batch")},
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    model: str, token: str | None, extra: tuple[str, ...] = ()
) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if token:
        env["ALIGN_RM_TOKEN"] = token
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "align.cli",
            "rm",
            "serve",
            "--model",
            model,
            "--port",
            str(port),
            *extra,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            urllib.request.urlopen(base + "/health", timeout=1).read()
            return proc, base + "/score"
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with {proc.returncode}") from None
            time.sleep(0.25)
    proc.kill()
    raise SystemExit("the server did not come up in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="Server's /score URL (loopback only).")
    parser.add_argument("--model", help="Start `align rm serve --model MODEL` on a free port.")
    parser.add_argument("--token")
    parser.add_argument(
        "--max-batch", type=int, help="--max-batch of the server it starts (1 = no batching)."
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--malformed-every", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    if args.clients * args.requests > 10_000:
        raise SystemExit("bounded on purpose: at most 10,000 requests")
    proc = None
    if args.model:
        extra = ("--max-batch", str(args.max_batch)) if args.max_batch else ()
        proc, args.url = start_server(args.model, args.token, extra)
    host = (args.url or "").split("//", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
    if host not in ("127.0.0.1", "localhost", "[::1]"):
        raise SystemExit("load tests run against loopback only (--url http://127.0.0.1:PORT/...)")
    try:
        print(json.dumps({**run_load(args), "server_max_batch": args.max_batch}))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
