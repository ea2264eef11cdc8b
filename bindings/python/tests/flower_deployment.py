#!/usr/bin/env python3
"""End-to-end test of the lastmile Flower app on Flower's deployment engine, loopback only.

Starts ``flower-superlink --insecure`` and ``--supernodes`` (>= 3) ``flower-supernode
--insecure`` processes on 127.0.0.1 (ports picked free at run time), one digits
partition per SuperNode, submits the app with ``flwr run <app> <connection> --stream``
and reads the results JSON the ServerApp writes. It then checks:

1. accuracy after the last round exceeds the initial accuracy by ``--margin``
   (for full, top-n, unbiased and collective; uniform and PriSM-like are biased
   and stay near chance in-process too);
2. for every client and round, the bytes the client received equal the Rust
   ``expected_down`` and the bytes it sent equal ``expected_up`` (the ServerApp
   already fails the run otherwise; the file is checked again here);
3. the same sampled clients, bytes and accuracy per round as the in-process
   ``lastmile_fl.simulate`` with the same settings: accuracy within ``--tolerance``
   (default: 2 held-out examples) every round; a strategy that diverges in-process
   (an error in round r) must fail in round r with the same error under Flower;
4. every process it started, and every process those started, is gone at the end.

All processes run in their own session with a marker in their environment;
cleanup sends SIGTERM to each process group, then SIGKILL, then scans /proc for the
marker. Cleanup runs on success, failure, Ctrl-C, SIGTERM and the global
``--time-limit``. Each process logs to its own file; on failure the test prints
their tails. Exit code 0 only on success.

Usage: python flower_deployment.py [strategy] [--rounds 4] [--supernodes 4] ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
APP_DIR = HERE.parent / "flower-app"
MARKER_VAR = "LASTMILE_FLOWER_E2E"
STRATEGIES = ("full", "top-n", "uniform", "uniform-rescaled", "prism-like", "unbiased", "collective")


class TestFailure(Exception):
    """A check failed; the message says which and with what numbers."""


class TimeLimit(BaseException):
    """The global time bound was reached (raised from SIGALRM)."""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("strategy", nargs="?", default="collective", choices=STRATEGIES)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--supernodes", type=int, default=4, help="SuperNodes = partitions (>= 3)")
    p.add_argument("--clients-per-round", type=int, default=3)
    p.add_argument("--keep-ratio", type=float, default=0.25)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--margin", type=float, default=0.2, help="required accuracy gain over the initial model")
    p.add_argument(
        "--tolerance",
        type=float,
        default=None,
        help="max |accuracy(Flower) - accuracy(simulate)| per round; default 2 / test examples",
    )
    p.add_argument("--time-limit", type=float, default=480.0, help="global bound in seconds")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, results)")
    p.add_argument("--json-out", type=Path, default=None, help="copy the results JSON here")
    a = p.parse_args()
    if a.supernodes < 3:
        p.error("--supernodes must be >= 3")
    if not 1 <= a.clients_per_round <= a.supernodes:
        p.error("--clients-per-round must be in [1, supernodes]")
    if a.rounds < 1:
        p.error("--rounds must be >= 1")
    return a


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for_port(port: int, deadline: float, proc: subprocess.Popen, name: str) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestFailure(f"{name} exited with code {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TestFailure(f"{name} did not listen on 127.0.0.1:{port} in time")


def marked_pids(marker: str) -> list[int]:
    """Processes (other than this one) whose environment holds our marker."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if needle in env:
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    if f.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                        continue  # a zombie holds no resources; its parent reaps it
            except OSError:
                continue
            found.append(int(entry))
    return found


class Cluster:
    """The processes of one test run; `stop()` leaves none behind."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.marker = uuid.uuid4().hex
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []
        venv_bin = str(Path(sys.executable).parent)
        self.env = dict(os.environ)
        self.env.update(
            {
                MARKER_VAR: self.marker,
                # Flower's subprocess launchers find flower-superexec/flwr-* on PATH.
                "PATH": venv_bin + os.pathsep + self.env.get("PATH", ""),
                "FLWR_TELEMETRY_ENABLED": "0",
                "FLWR_DISABLE_UPDATE_CHECK": "1",
                "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
                "PYTHONUNBUFFERED": "1",
            }
        )

    def start(self, name: str, argv: list[str], flwr_home: Path) -> subprocess.Popen:
        flwr_home.mkdir(parents=True, exist_ok=True)
        log_path = self.root / f"{name}.log"
        env = dict(self.env, FLWR_HOME=str(flwr_home))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,  # own process group: killpg reaches its children
            )
        self.procs.append((name, proc, log_path))
        return proc

    def stop(self, grace: float = 10.0) -> list[int]:
        """SIGTERM every group, then SIGKILL; then the marker scan. Returns pids still alive."""
        for _name, proc, _log in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        end = time.monotonic() + grace
        while time.monotonic() < end and (
            any(p.poll() is None for _n, p, _l in self.procs) or marked_pids(self.marker)
        ):
            time.sleep(0.2)
        for _name, proc, _log in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        # Flower starts SuperExec (and through it the Server/ClientApps) in new sessions.
        for pid in marked_pids(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for _name, proc, _log in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        end = time.monotonic() + 5
        while time.monotonic() < end and marked_pids(self.marker):
            time.sleep(0.2)
        return marked_pids(self.marker)

    def print_log_tails(self, lines: int = 40) -> None:
        for name, _proc, log in self.procs:
            try:
                text = log.read_text(errors="replace").splitlines()
            except OSError as err:
                text = [f"(cannot read {log}: {err})"]
            print(f"\n----- {name}: last {min(lines, len(text))} of {len(text)} lines of {log} -----")
            print("\n".join(text[-lines:]))


def toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def run_flower(args: argparse.Namespace, cluster: Cluster, results_path: Path, deadline: float) -> dict:
    root = cluster.root
    link_port, *node_ports = free_ports(1 + args.supernodes)
    bin_dir = Path(sys.executable).parent

    link = cluster.start(
        "superlink",
        [
            str(bin_dir / "flower-superlink"),
            "--insecure",
            "--host",
            "127.0.0.1",
            "--port",
            str(link_port),
            "--disable-runtime-dependency-installation",
        ],
        root / "home-superlink",
    )
    wait_for_port(link_port, min(deadline, time.monotonic() + 60), link, "superlink")

    for i, port in enumerate(node_ports):
        node = cluster.start(
            f"supernode-{i}",
            [
                str(bin_dir / "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{link_port}",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--node-config",
                f"partition-id={i} num-partitions={args.supernodes}",
            ],
            root / f"home-supernode-{i}",
        )
        wait_for_port(port, min(deadline, time.monotonic() + 60), node, f"supernode-{i}")

    cli_home = root / "home-cli"
    cli_home.mkdir()
    (cli_home / "config.toml").write_text(
        "[superlink]\n"
        'default = "lastmile-e2e"\n\n'
        "[superlink.lastmile-e2e]\n"
        f'address = "127.0.0.1:{link_port}"\n'
        "insecure = true\n",
        encoding="utf-8",
    )
    overrides = " ".join(
        [
            f"num-server-rounds={args.rounds}",
            f"strategy={toml_str(args.strategy)}",
            f"keep-ratio={args.keep_ratio!r}",
            f"clients-per-round={args.clients_per_round}",
            f"alpha={args.alpha!r}",
            f"seed={args.seed}",
            f"results-path={toml_str(str(results_path))}",
            "round-timeout=300.0",
            "discovery-timeout=120.0",
        ]
    )
    # A copy of the app, so Flower's FAB build and module check never write into the repo.
    app_copy = root / "app"
    shutil.copytree(APP_DIR, app_copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".flwr"))
    run = cluster.start(
        "flwr-run",
        [str(bin_dir / "flwr"), "run", str(app_copy), "lastmile-e2e", "--stream", "--run-config", overrides],
        cli_home,
    )

    # Done when the ServerApp wrote status done/failed; `flwr run --stream` should exit then too.
    data: dict = {}
    while time.monotonic() < deadline:
        if results_path.exists():
            try:
                data = json.loads(results_path.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, OSError):
                data = {}
            if data.get("status") in ("done", "failed"):
                break
        if run.poll() is not None and run.returncode != 0:
            raise TestFailure(f"`flwr run` exited with code {run.returncode} (results: {data.get('status')})")
        time.sleep(0.5)
    else:
        raise TestFailure(f"no finished results after the time limit (last status: {data.get('status')})")
    # A failed run is checked against the in-process run (a diverging strategy fails in both).
    for key in ("rounds", "num_partitions", "layer_sizes", "initial_accuracy"):
        if key not in data:
            raise TestFailure(f"the ServerApp failed before the first round: {data.get('error')}")
    try:
        run.wait(timeout=max(1.0, min(30.0, deadline - time.monotonic())))
    except subprocess.TimeoutExpired:
        print("note: `flwr run --stream` still running 30 s after the results; it will be stopped")
    return data


#: Strategies whose global model must learn in a few rounds. Uniform and PriSM-like
#: keep triplets unscaled, so the FedAvg of their reconstructions shrinks every layer
#: each round and stays near chance (docs/benchmarks.md, "Federated sharding").
LEARNING = ("full", "top-n", "unbiased", "collective")


def reference(data: dict) -> tuple[dict | None, int | None, str | None, float, int]:
    """The in-process run with the Flower run's settings.

    Returns (simulate result or None, the round at which simulate fails or None, its
    error message, seconds, held-out size). A failing simulation (a strategy that
    diverges) is located by rerunning it with 1, 2, ... rounds.
    """
    import lastmile_fl  # the test process needs the extension too, for the reference run

    s = data["settings"]
    parts, test = lastmile_fl.digits_federation(s["alpha"], data["num_partitions"], s["seed"])

    def sim(rounds: int) -> dict:
        return lastmile_fl.simulate(
            data["layer_sizes"],
            parts,
            test,
            rounds=rounds,
            clients_per_round=s["clients_per_round"],
            strategy=s["strategy"],
            keep_ratio=s["keep_ratio"],
            sampler=s["sampler"],
            local_epochs=s["local_epochs"],
            batch_size=s["batch_size"],
            learning_rate=s["learning_rate"],
            proximal_mu=s["proximal_mu"],
            seed=s["seed"],
        )

    t0 = time.perf_counter()
    try:
        out = sim(s["num_server_rounds"])
        return out, None, None, time.perf_counter() - t0, len(test[1])
    except lastmile_fl.LastmileError as err:
        message = str(err)
    seconds = time.perf_counter() - t0
    for rounds in range(1, s["num_server_rounds"] + 1):
        try:
            out = sim(rounds)
        except lastmile_fl.LastmileError:
            return (out if rounds > 1 else None), rounds, message, seconds, len(test[1])
    raise TestFailure("simulate failed with the full round count but not when rerun round by round")


def check(args: argparse.Namespace, data: dict, lines: list[str]) -> None:
    """The assertions; appends report lines, raises TestFailure on the first failed check."""
    rounds = data["rounds"]
    sim, fail_round, sim_error, sim_seconds, n_test = reference(data)
    tol = args.tolerance if args.tolerance is not None else 2.0 / n_test
    lines.append(
        f"reference: lastmile_fl.simulate in {sim_seconds:.2f} s"
        + (f", fails in round {fail_round}: {sim_error}" if fail_round else "")
        + f"; accuracy tolerance {tol:.5f} ({tol * n_test:.1f} of {n_test} held-out examples)"
    )

    # 0. both runs end the same way: all rounds, or the same error in the same round
    if fail_round is None:
        if data["status"] != "done":
            raise TestFailure(f"the ServerApp failed but simulate did not: {data.get('error')}")
        expected_rounds = args.rounds
    else:
        if data["status"] != "failed":
            raise TestFailure(f"simulate fails in round {fail_round} ({sim_error}) but the Flower run did not")
        if sim_error not in (data.get("error") or ""):
            raise TestFailure(f"Flower run failed with {data.get('error')!r}, simulate with {sim_error!r}")
        expected_rounds = fail_round - 1
        lines.append(f"both runs fail in round {fail_round} with the same error; Flower's: {data['error']}")
    if [r["round"] for r in rounds] != list(range(1, expected_rounds + 1)):
        raise TestFailure(f"expected rounds 1..{expected_rounds}, found {[r['round'] for r in rounds]}")

    # 1. byte accounting, per client and round
    for r in rounds:
        n = len(r["clients"])
        if n != args.clients_per_round:
            raise TestFailure(f"round {r['round']}: {n} clients, expected {args.clients_per_round}")
        for key in ("bytes_down", "bytes_up", "expected_down", "expected_up"):
            if len(r[key]) != n:
                raise TestFailure(f"round {r['round']}: {key} has {len(r[key])} entries for {n} clients")
        if r["bytes_down"] != r["expected_down"] or r["bytes_up"] != r["expected_up"]:
            raise TestFailure(
                f"round {r['round']}: bytes down {r['bytes_down']} vs expected {r['expected_down']}, "
                f"up {r['bytes_up']} vs expected {r['expected_up']}"
            )
    lines.append(f"bytes: every client of {len(rounds)} rounds: received == expected_down, sent == expected_up")

    # 2. the same run as in-process: clients, bytes, accuracy
    initial = data["initial_accuracy"]
    sim_initial = sim["initial_accuracy"] if sim else initial
    if abs(sim_initial - initial) > tol:
        raise TestFailure(f"initial accuracy: Flower {initial} vs simulate {sim_initial}")
    sim_rounds = sim["rounds"] if sim else []
    if len(sim_rounds) != len(rounds):
        raise TestFailure(f"{len(rounds)} Flower rounds vs {len(sim_rounds)} simulated")
    lines.append(
        "round | clients | acc Flower | acc simulate | bytes down (F/sim) | bytes up (F/sim) | s Flower | s in-process"
    )
    worst = abs(sim_initial - initial)
    for fr, sr in zip(rounds, sim_rounds, strict=True):
        if list(fr["clients"]) != list(sr["clients"]):
            raise TestFailure(f"round {fr['round']}: Flower sampled {fr['clients']}, simulate {sr['clients']}")
        down, up = sum(fr["bytes_down"]), sum(fr["bytes_up"])
        if (down, up) != (sr["bytes_down"], sr["bytes_up"]):
            raise TestFailure(
                f"round {fr['round']}: bytes down/up Flower {down}/{up} vs simulate {sr['bytes_down']}/{sr['bytes_up']}"
            )
        diff = abs(fr["accuracy"] - sr["test_accuracy"])
        worst = max(worst, diff)
        lines.append(
            f"{fr['round']:>5} | {fr['clients']} | {fr['accuracy']:.4f} | {sr['test_accuracy']:.4f} | "
            f"{down}/{sr['bytes_down']} | {up}/{sr['bytes_up']} | {fr['seconds']:.2f} | {sr['seconds']:.3f}"
        )
        if diff > tol:
            raise TestFailure(
                f"round {fr['round']}: accuracy Flower {fr['accuracy']:.4f} vs simulate {sr['test_accuracy']:.4f} "
                f"(|diff| {diff:.4f} > {tol:.4f})"
            )
    lines.append(f"max |accuracy(Flower) - accuracy(simulate)| over rounds: {worst:.5f}")

    # 3. accuracy rises (for the strategies that learn)
    if args.strategy in LEARNING:
        final = rounds[-1]["accuracy"]
        lines.append(f"accuracy: initial {initial:.4f} -> final {final:.4f} (gain required > {args.margin})")
        if not final > initial + args.margin:
            raise TestFailure(f"accuracy did not rise by {args.margin}: {initial:.4f} -> {final:.4f}")
    else:
        lines.append(
            f"accuracy-rise check not applied to {args.strategy} (biased or diverging at these settings; "
            "Flower matched simulate instead)"
        )


def main() -> int:
    args = parse_args()
    t_start = time.monotonic()
    deadline = t_start + args.time_limit
    root = Path(tempfile.mkdtemp(prefix="lastmile-flower-e2e-"))
    results_path = root / "results.json"
    cluster = Cluster(root)

    def on_alarm(_signum, _frame):
        raise TimeLimit(f"global time limit of {args.time_limit:.0f} s reached")

    def on_term(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(int(args.time_limit) + 1)

    ok = False
    report: list[str] = []
    try:
        data = run_flower(args, cluster, results_path, deadline)
        if args.json_out:
            shutil.copyfile(results_path, args.json_out)
        if data["status"] == "done":
            report.append(
                f"Flower run: {data['training_seconds']:.1f} s for {args.rounds} rounds, "
                f"discovery {data['discovery_seconds']:.1f} s"
            )
        check(args, data, report)
        ok = True
    except (TestFailure, TimeLimit, KeyboardInterrupt, Exception) as err:  # noqa: BLE001 - report every failure
        print(f"FAIL: {type(err).__name__}: {err}")
    finally:
        signal.alarm(0)
        left = cluster.stop()
        if left:
            ok = False
            print(f"FAIL: processes left after cleanup: {left}")
        if not ok:
            cluster.print_log_tails()
    for line in report:
        print(line)
    print(
        f"strategy {args.strategy}: {'PASS' if ok else 'FAIL'}; wall time {time.monotonic() - t_start:.1f} s; "
        f"{len(cluster.procs)} processes started, {len(left)} left after cleanup" + ("" if ok else f"; logs in {root}")
    )
    if ok and not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    elif ok:
        print(f"kept {root}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
