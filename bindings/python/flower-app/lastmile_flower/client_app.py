"""ClientApp: trains the shard the server sent, with `lastmile_fl.Client`.

Messages handled:

- ``query``: replies with this SuperNode's ``partition-id`` and ``num-partitions``
  (from its ``--node-config``), so the server can map partitions to node ids.
- ``train``: the ConfigRecord ``lastmile`` carries ``shard`` (the lastmile shard
  message, wire format version 1, as bytes), ``round``, ``client-id``,
  ``train-seed`` and ``layer-sizes``. The reply's ConfigRecord ``lastmile`` carries
  ``update`` (the lastmile update message) and its MetricRecord ``metrics`` the
  sample count, the training loss and the bytes received and sent.
"""

from __future__ import annotations

import functools
import time

import lastmile_fl
import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .settings import METRICS, RECORD, Settings, node_partition

app = ClientApp()


@functools.lru_cache(maxsize=4)
def load_partition(alpha: float, num_partitions: int, seed: int, partition_id: int) -> tuple[np.ndarray, np.ndarray]:
    """This node's (features, labels) of the digits federation; cached per process."""
    parts, _test = lastmile_fl.digits_federation(alpha, num_partitions, seed)
    x, y = parts[partition_id]
    return x, y


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which partition this SuperNode holds."""
    pid, n = node_partition(context.node_config)
    record = ConfigRecord({"partition-id": pid, "num-partitions": n})
    return Message(RecordDict({RECORD: record}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train the received shard on this node's partition and reply with the update."""
    pid, n = node_partition(context.node_config)
    settings = Settings.from_run_config(context.run_config)
    cfg = msg.content[RECORD]
    payload = cfg["shard"]
    if not isinstance(payload, bytes):
        raise TypeError(f"`shard` must be bytes, found {type(payload).__name__}")
    client_id = int(cfg["client-id"])
    server_round = int(cfg["round"])
    if client_id != pid:
        raise ValueError(f"shard for client {client_id} sent to the node holding partition {pid}")
    # The shard names its round and client inside the checksummed bytes too.
    header = lastmile_fl.decode_shard(payload)
    if int(header["client_id"]) != pid or int(header["round"]) != server_round:
        raise ValueError(
            f"shard bytes are for round {header['round']}, client {header['client_id']}; "
            f"expected round {server_round}, client {pid}"
        )

    x, y = load_partition(settings.alpha, n, settings.seed, pid)
    client = lastmile_fl.Client(
        [int(v) for v in cfg["layer-sizes"]],
        local_epochs=settings.local_epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        proximal_mu=settings.proximal_mu,
    )
    start = time.perf_counter()
    update, loss_sum, rows = client.train(payload, x, y, int(cfg["train-seed"]))
    seconds = time.perf_counter() - start

    metrics = MetricRecord(
        {
            "num-examples": int(len(y)),
            "loss-sum": float(loss_sum),
            "rows": int(rows),
            "bytes-received": len(payload),
            "bytes-sent": len(update),
            "expected-up": int(lastmile_fl.expected_update_len(payload)),
            "partition-id": pid,
            "train-seconds": seconds,
        }
    )
    content = RecordDict({RECORD: ConfigRecord({"update": update}), METRICS: metrics})
    return Message(content, reply_to=msg)
