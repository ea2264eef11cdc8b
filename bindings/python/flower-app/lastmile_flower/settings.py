"""Run configuration of the lastmile Flower app, read once and validated."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

#: Sharding strategies `lastmile_fl.Server` accepts; "full" is FedAvg of the dense model.
STRATEGIES = (
    "full",
    "top-n",
    "uniform",
    "uniform-rescaled",
    "prism-like",
    "unbiased",
    "collective",
)
SAMPLERS = ("systematic", "conditional-poisson")
AGGREGATIONS = ("fedavg", "factorwise")

#: Name of the ConfigRecord that carries lastmile's bytes in both directions.
RECORD = "lastmile"
#: Name of the MetricRecord of a train reply.
METRICS = "metrics"


class SettingsError(ValueError):
    """A run-config value is missing, of the wrong type or out of range."""


def _get(config: Mapping[str, Any], key: str, kind: type) -> Any:
    if key not in config:
        raise SettingsError(f"run config: `{key}` is missing")
    value = config[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise SettingsError(f"run config: `{key}` must be {kind.__name__}, found {type(value).__name__} {value!r}")
    return value


def _positive(key: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise SettingsError(f"run config: `{key}` must be finite and > 0, found {value!r}")


def parse_hidden_sizes(text: str) -> list[int]:
    """Parse "256,256" into [256, 256]; an empty string means no hidden layer."""
    text = text.strip()
    if not text:
        return []
    sizes = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) == 0:
            raise SettingsError(
                f"run config: `hidden-sizes` must be positive integers separated by commas, found {text!r}"
            )
        sizes.append(int(part))
    return sizes


@dataclass(frozen=True)
class Settings:
    """Everything a run needs, from `[tool.flwr.app.config]` plus `--run-config`."""

    num_server_rounds: int
    strategy: str
    keep_ratio: float
    sampler: str
    aggregation: str
    clients_per_round: int
    alpha: float
    seed: int
    local_epochs: int
    batch_size: int
    learning_rate: float
    proximal_mu: float
    hidden_sizes: tuple[int, ...]
    results_path: str
    round_timeout: float
    discovery_timeout: float
    poll_interval: float

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> Settings:
        """Read and validate the run config; raise `SettingsError` on the first bad value."""
        s = cls(
            num_server_rounds=_get(config, "num-server-rounds", int),
            strategy=_get(config, "strategy", str),
            keep_ratio=_get(config, "keep-ratio", float),
            sampler=_get(config, "sampler", str),
            aggregation=_get(config, "aggregation", str),
            clients_per_round=_get(config, "clients-per-round", int),
            alpha=_get(config, "alpha", float),
            seed=_get(config, "seed", int),
            local_epochs=_get(config, "local-epochs", int),
            batch_size=_get(config, "batch-size", int),
            learning_rate=_get(config, "learning-rate", float),
            proximal_mu=_get(config, "proximal-mu", float),
            hidden_sizes=tuple(parse_hidden_sizes(_get(config, "hidden-sizes", str))),
            results_path=_get(config, "results-path", str),
            round_timeout=_get(config, "round-timeout", float),
            discovery_timeout=_get(config, "discovery-timeout", float),
            poll_interval=_get(config, "poll-interval", float),
        )
        if s.strategy not in STRATEGIES:
            raise SettingsError(f"run config: `strategy` must be one of {STRATEGIES}, found {s.strategy!r}")
        if s.sampler not in SAMPLERS:
            raise SettingsError(f"run config: `sampler` must be one of {SAMPLERS}, found {s.sampler!r}")
        if s.aggregation not in AGGREGATIONS:
            raise SettingsError(f"run config: `aggregation` must be one of {AGGREGATIONS}, found {s.aggregation!r}")
        for key, value in (
            ("num-server-rounds", s.num_server_rounds),
            ("clients-per-round", s.clients_per_round),
            ("local-epochs", s.local_epochs),
            ("batch-size", s.batch_size),
        ):
            if value < 1:
                raise SettingsError(f"run config: `{key}` must be >= 1, found {value}")
        if s.seed < 0:
            raise SettingsError(f"run config: `seed` must be >= 0, found {s.seed}")
        if not (0.0 < s.keep_ratio <= 1.0):
            raise SettingsError(f"run config: `keep-ratio` must be in (0, 1], found {s.keep_ratio}")
        for key, value in (
            ("alpha", s.alpha),
            ("learning-rate", s.learning_rate),
            ("round-timeout", s.round_timeout),
            ("discovery-timeout", s.discovery_timeout),
            ("poll-interval", s.poll_interval),
        ):
            _positive(key, value)
        if not (math.isfinite(s.proximal_mu) and s.proximal_mu >= 0):
            raise SettingsError(f"run config: `proximal-mu` must be finite and >= 0, found {s.proximal_mu}")
        return s

    def as_dict(self) -> dict[str, Any]:
        """The settings as plain JSON values, for the results file."""
        d = asdict(self)
        d["hidden_sizes"] = list(self.hidden_sizes)
        return d


def node_partition(node_config: Mapping[str, Any]) -> tuple[int, int]:
    """(partition-id, num-partitions) of a SuperNode, checked."""
    try:
        pid = node_config["partition-id"]
        n = node_config["num-partitions"]
    except KeyError as err:
        raise SettingsError(
            f"node config: {err.args[0]!r} is missing; start the SuperNode with "
            "--node-config 'partition-id=<i> num-partitions=<n>'"
        ) from None
    if isinstance(pid, bool) or isinstance(n, bool) or not isinstance(pid, int) or not isinstance(n, int):
        raise SettingsError(f"node config: partition-id and num-partitions must be integers, found {pid!r}, {n!r}")
    if not (n >= 1 and 0 <= pid < n):
        raise SettingsError(f"node config: need 0 <= partition-id < num-partitions, found {pid}, {n}")
    return pid, n
