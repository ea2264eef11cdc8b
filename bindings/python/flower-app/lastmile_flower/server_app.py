"""ServerApp: lastmile spectral sharding as a Flower Strategy on the Message API.

The global model lives in `lastmile_fl.Server` (Rust). Each round it picks the
clients, takes the SVD of every sharded weight and encodes one shard message per
client; this Strategy only moves those bytes to the SuperNode holding that
client's partition and hands the update bytes back. Round 0 is a ``query`` to
every node for its ``partition-id``. Evaluation is centralised on the held-out
digits after every round. With ``results-path`` set, the ServerApp writes a JSON
record per round (accuracy, bytes per client, wall time) after each round.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Iterable
from logging import INFO
from typing import Any

import flwr
import lastmile_fl
import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from .settings import METRICS, RECORD, Settings, SettingsError, node_partition

app = ServerApp()


class RoundError(RuntimeError):
    """A round's replies are missing, failed, or disagree with the Rust byte accounting."""


def flower_message_bytes(msg: Message) -> int | None:
    """Bytes of Flower's serialised object tree of a message (what its transport carries).

    Flower 1.42 sends a message as content-addressed objects (message, record
    dict, records, arrays), each ``deflate()``d; this sums them. None when the
    internal helper is unavailable.
    """
    try:
        from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects
    except ImportError:
        return None
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


class PollingGrid:
    """Flower's Grid with a shorter reply-polling interval in `send_and_receive`.

    Flower 1.42's deployment Grid polls the SuperLink for replies every 3 s; on a
    round that takes ~1 s that quantum dominates the wall time. Everything else is
    delegated to the wrapped Grid unchanged.
    """

    def __init__(self, grid: Grid, interval: float) -> None:
        self._grid = grid
        self._interval = interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        messages = list(messages)
        ids = list(self._grid.push_messages(messages))
        if len(ids) != len(messages) or None in ids:
            raise RoundError(f"the SuperLink stored {len(ids)} of {len(messages)} messages (see the log above)")
        pending = set(ids)
        replies: list[Message] = []
        end = None if timeout is None else time.monotonic() + timeout
        while pending:
            got = list(self._grid.pull_messages(pending))
            replies.extend(got)
            pending.difference_update(m.metadata.reply_to_message_id for m in got)
            if not pending or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self._interval)
        return replies


def discover_partitions(grid: Grid, timeout: float) -> tuple[dict[int, int], int]:
    """Ask every connected node for its partition; wait until partitions 0..N-1 all answer.

    Returns (partition id -> node id, N). Raises `RoundError` on an error reply, a
    node that disagrees on N, two nodes with one partition, or the timeout.
    """
    deadline = time.monotonic() + timeout
    node_of: dict[int, int] = {}
    queried: set[int] = set()
    num_partitions: int | None = None
    while True:
        fresh = [n for n in grid.get_node_ids() if n not in queried]
        if fresh:
            msgs = [Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in fresh]
            replies = list(grid.send_and_receive(msgs, timeout=max(1.0, deadline - time.monotonic())))
            for reply in replies:
                node = reply.metadata.src_node_id
                if reply.has_error():
                    raise RoundError(f"query: node {node} replied with an error: {reply.error.reason}")
                rec = reply.content[RECORD]
                pid, n = node_partition({"partition-id": rec["partition-id"], "num-partitions": rec["num-partitions"]})
                if num_partitions is None:
                    num_partitions = n
                elif n != num_partitions:
                    raise RoundError(f"query: node {node} has num-partitions {n}, others {num_partitions}")
                if pid in node_of:
                    raise RoundError(f"query: nodes {node_of[pid]} and {node} both hold partition {pid}")
                node_of[pid] = node
                queried.add(node)
        if num_partitions is not None and len(node_of) == num_partitions:
            return node_of, num_partitions
        if time.monotonic() > deadline:
            raise RoundError(
                f"query: after {timeout:.0f} s, {len(node_of)} of "
                f"{num_partitions if num_partitions is not None else '?'} partitions have a node "
                f"(known: {sorted(node_of)})"
            )
        time.sleep(1.0)


class Results:
    """The JSON results file, rewritten (atomically) after every round."""

    def __init__(self, path: str, settings: Settings) -> None:
        if path and not os.path.isabs(path):
            raise SettingsError(f"run config: `results-path` must be absolute, found {path!r}")
        self.path = path
        self.data: dict[str, Any] = {
            "status": "running",
            "error": None,
            "flwr_version": flwr.__version__,
            "settings": settings.as_dict(),
            "rounds": [],
        }

    def write(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)

    def fail(self, err: BaseException) -> None:
        self.data["status"] = "failed"
        self.data["error"] = "".join(traceback.format_exception_only(type(err), err)).strip()
        self.write()


class SpectralSharding(Strategy):
    """Flower Strategy around `lastmile_fl.Server`: shards down, updates up, FedAvg in Rust."""

    def __init__(
        self,
        server: Any,
        settings: Settings,
        layer_sizes: list[int],
        node_of: dict[int, int],
        results: Results,
    ) -> None:
        self.server = server
        self.settings = settings
        self.layer_sizes = layer_sizes
        self.node_of = node_of
        self.partition_of = {node: pid for pid, node in node_of.items()}
        self.results = results
        self._plan: Any = None
        self._record: dict[str, Any] = {}
        self._round_start = 0.0

    def summary(self) -> None:
        s = self.settings
        log(
            INFO,
            "\t├──> lastmile spectral sharding: %s, keep %.3g, %s sampler, %s",
            s.strategy,
            s.keep_ratio,
            s.sampler,
            s.aggregation,
        )
        log(
            INFO,
            "\t├──> MLP %s, %d of %d clients per round",
            "-".join(map(str, self.layer_sizes)),
            s.clients_per_round,
            len(self.node_of),
        )
        log(INFO, "\t└──> partition -> node: %s", self.node_of)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._round_start = time.perf_counter()
        plan = self.server.begin_round()
        if plan.round != server_round:
            raise RoundError(f"lastmile server is at round {plan.round}, Flower at {server_round}")
        n = len(plan.clients)
        if not (len(plan.payloads) == len(plan.expected_down) == len(plan.expected_up) == n):
            raise RoundError("round plan: clients, payloads and expected sizes differ in length")
        messages = []
        for cid, payload in zip(plan.clients, plan.payloads, strict=True):
            record = ConfigRecord(
                {
                    "shard": payload,
                    "round": server_round,
                    "client-id": cid,
                    "train-seed": int(lastmile_fl.client_seed(self.settings.seed, server_round, cid)),
                    "layer-sizes": list(self.layer_sizes),
                }
            )
            messages.append(
                Message(RecordDict({RECORD: record}), dst_node_id=self.node_of[cid], message_type=MessageType.TRAIN)
            )
        self._plan = plan
        self._record = {
            "round": server_round,
            "clients": list(plan.clients),
            "nodes": [self.node_of[c] for c in plan.clients],
            "expected_down": list(plan.expected_down),
            "expected_up": list(plan.expected_up),
            "flower_message_bytes_down": [flower_message_bytes(m) for m in messages],
        }
        log(
            INFO,
            "configure_train: round %d, clients %s, %d shard bytes",
            server_round,
            plan.clients,
            sum(plan.expected_down),
        )
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        plan = self._plan
        if plan is None or plan.round != server_round:
            raise RoundError(f"aggregate_train for round {server_round} without its plan")
        replies = list(replies)
        errors = [r for r in replies if r.has_error()]
        if errors:
            raise RoundError(
                "; ".join(
                    f"node {r.metadata.src_node_id} (partition {self.partition_of.get(r.metadata.src_node_id)}) "
                    f"failed: {r.error.reason}"
                    for r in errors
                )
            )
        by_client: dict[int, Message] = {}
        for r in replies:
            pid = self.partition_of.get(r.metadata.src_node_id)
            if pid is None or pid not in plan.clients:
                raise RoundError(f"round {server_round}: reply from unexpected node {r.metadata.src_node_id}")
            if pid in by_client:
                raise RoundError(f"round {server_round}: two replies for client {pid}")
            by_client[pid] = r
        missing = [c for c in plan.clients if c not in by_client]
        if missing:
            raise RoundError(
                f"round {server_round}: no reply from clients {missing} within {self.settings.round_timeout:.0f} s"
            )

        updates: list[bytes] = []
        rec = self._record
        rec.update(bytes_down=[], bytes_up=[], num_examples=[], client_train_seconds=[], flower_message_bytes_up=[])
        loss_sum, rows = 0.0, 0
        for i, cid in enumerate(plan.clients):
            reply = by_client[cid]
            update = reply.content[RECORD]["update"]
            m = reply.content[METRICS]
            if not isinstance(update, bytes):
                raise RoundError(f"client {cid}: `update` is {type(update).__name__}, not bytes")
            down, up = len(plan.payloads[i]), len(update)
            checks = {
                "shard bytes == Rust expected_down": down == plan.expected_down[i],
                "bytes the client received == expected_down": int(m["bytes-received"]) == plan.expected_down[i],
                "update bytes == Rust expected_up": up == plan.expected_up[i],
                "bytes the client sent == expected_up": int(m["bytes-sent"]) == plan.expected_up[i],
                "client's expected_update_len == expected_up": int(m["expected-up"]) == plan.expected_up[i],
            }
            failed = [name for name, ok in checks.items() if not ok]
            if failed:
                raise RoundError(
                    f"round {server_round}, client {cid}: byte accounting broken ({', '.join(failed)}): "
                    f"sent {down}, client got {int(m['bytes-received'])}, expected down {plan.expected_down[i]}; "
                    f"received {up}, client sent {int(m['bytes-sent'])}, expected up {plan.expected_up[i]}"
                )
            updates.append(update)
            loss_sum += float(m["loss-sum"])
            rows += int(m["rows"])
            rec["bytes_down"].append(down)
            rec["bytes_up"].append(up)
            rec["num_examples"].append(int(m["num-examples"]))
            rec["client_train_seconds"].append(float(m["train-seconds"]))
            rec["flower_message_bytes_up"].append(flower_message_bytes(reply))

        self.server.finish_round(updates)
        self._plan = None
        if self.server.rounds_done != server_round:
            raise RoundError(
                f"lastmile server reports {self.server.rounds_done} rounds done after round {server_round}"
            )
        rec["train_loss"] = loss_sum / rows if rows else float("nan")
        rec["seconds_train"] = time.perf_counter() - self._round_start
        metrics = MetricRecord(
            {"train-loss": rec["train_loss"], "bytes-down": sum(rec["bytes_down"]), "bytes-up": sum(rec["bytes_up"])}
        )
        return params_record(self.server), metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # Evaluation is centralised (evaluate_fn) on the held-out split.
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return None

    def finish_record(self, server_round: int, accuracy: float) -> None:
        """Close the round's record after centralised evaluation and write the results file."""
        rec = self._record
        if rec.get("round") != server_round:
            raise RoundError(f"evaluation of round {server_round} without its training record")
        rec["accuracy"] = accuracy
        rec["seconds"] = time.perf_counter() - self._round_start
        self.results.data["rounds"].append(rec)
        self._record = {}
        self.results.write()


def params_record(server: Any) -> ArrayRecord:
    """The global model as a Flower ArrayRecord (float32, weights [in, out])."""
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in server.params().items()})


def run(grid: Grid, settings: Settings, results: Results) -> None:
    grid = PollingGrid(grid, settings.poll_interval)  # type: ignore[assignment]
    t0 = time.perf_counter()
    node_of, num_partitions = discover_partitions(grid, settings.discovery_timeout)
    results.data["discovery_seconds"] = time.perf_counter() - t0
    results.data["num_partitions"] = num_partitions
    results.data["partition_nodes"] = {str(p): n for p, n in sorted(node_of.items())}
    if settings.clients_per_round > num_partitions:
        raise SettingsError(f"run config: clients-per-round {settings.clients_per_round} > {num_partitions} partitions")

    _parts, (x_test, y_test) = lastmile_fl.digits_federation(settings.alpha, num_partitions, settings.seed)
    layer_sizes = [int(x_test.shape[1]), *settings.hidden_sizes, int(y_test.max()) + 1]
    results.data["layer_sizes"] = layer_sizes
    results.data["test_examples"] = int(len(y_test))
    server = lastmile_fl.Server(
        layer_sizes,
        num_partitions,
        settings.clients_per_round,
        strategy=settings.strategy,
        keep_ratio=settings.keep_ratio,
        sampler=settings.sampler,
        aggregation=settings.aggregation,
        seed=settings.seed,
    )
    strategy = SpectralSharding(server, settings, layer_sizes, node_of, results)

    def evaluate_fn(server_round: int, _arrays: ArrayRecord) -> MetricRecord:
        accuracy = float(server.evaluate(x_test, y_test))
        if server_round == 0:
            results.data["initial_accuracy"] = accuracy
            results.write()
        else:
            strategy.finish_record(server_round, accuracy)
        return MetricRecord({"accuracy": accuracy})

    t1 = time.perf_counter()
    strategy.start(
        grid=grid,
        initial_arrays=params_record(server),
        num_rounds=settings.num_server_rounds,
        timeout=settings.round_timeout,
        evaluate_fn=evaluate_fn,
    )
    results.data["training_seconds"] = time.perf_counter() - t1
    results.data["final_accuracy"] = results.data["rounds"][-1]["accuracy"]
    results.data["status"] = "done"
    results.write()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Discover the partitions, run the rounds, write the results."""
    settings = Settings.from_run_config(context.run_config)
    results = Results(settings.results_path, settings)
    results.write()
    try:
        run(grid, settings, results)
    except BaseException as err:
        results.fail(err)
        raise
