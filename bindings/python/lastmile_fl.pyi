"""Type stubs of lastmile_fl: lastmile's spectral model sharding for Python
federated-learning engines (Flower). Built from Rust by maturin."""

from typing import Any

import numpy as np
import numpy.typing as npt

__version__: str

Features = npt.NDArray[np.float32]  # [n, d], C-contiguous
Labels = npt.NDArray[np.int64]  # [n]

class LastmileError(ValueError):
    """Any error of the Rust library: what was wrong and what was expected."""

class RoundPlan:
    """One round: the sampled clients and each one's shard message."""

    round: int
    clients: list[int]
    payloads: list[bytes]
    expected_down: list[int]
    expected_up: list[int]

class Server:
    """The server of a federated run (client sampling, shard messages,
    aggregation), seeded exactly as `simulate`."""

    def __init__(
        self,
        layer_sizes: list[int],
        num_clients: int,
        clients_per_round: int,
        strategy: str = "collective",
        keep_ratio: float | list[float] = 0.25,
        sampler: str = "conditional-poisson",
        aggregation: str = "fedavg",
        seed: int = 0,
        dense_output_layer: bool = False,
    ) -> None: ...
    def begin_round(self) -> RoundPlan: ...
    def finish_round(self, updates: list[bytes]) -> None: ...
    def evaluate(self, x: Features, y: Labels) -> float: ...
    def params(self) -> dict[str, npt.NDArray[np.float32]]: ...
    @property
    def rounds_done(self) -> int: ...

class Client:
    """A client's local trainer: SGD on the received factors and dense
    parameters (FedProx when proximal_mu > 0)."""

    def __init__(
        self,
        layer_sizes: list[int],
        local_epochs: int = 1,
        batch_size: int = 32,
        learning_rate: float = 0.05,
        proximal_mu: float = 0.0,
    ) -> None: ...
    def train(
        self, payload: bytes, x: Features, y: Labels, seed: int
    ) -> tuple[bytes, float, int]:
        """Returns (update message, summed loss, rows seen)."""

def digits_federation(
    alpha: float, num_partitions: int, seed: int
) -> tuple[list[tuple[Features, Labels]], tuple[Features, Labels]]: ...
def client_seed(seed: int, round: int, client: int) -> int: ...
def expected_update_len(payload: bytes) -> int: ...
def decode_shard(payload: bytes) -> dict[str, Any]: ...
def encode_update(
    payload: bytes,
    num_samples: int,
    layers: dict[str, tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
    dense: dict[str, npt.NDArray[np.float32]],
) -> bytes: ...
def simulate(
    layer_sizes: list[int],
    clients: list[tuple[Features, Labels]],
    test: tuple[Features, Labels],
    rounds: int,
    clients_per_round: int,
    strategy: str = "collective",
    keep_ratio: float | list[float] = 0.25,
    sampler: str = "conditional-poisson",
    local_epochs: int = 1,
    batch_size: int = 32,
    learning_rate: float = 0.05,
    proximal_mu: float = 0.0,
    seed: int = 0,
    aggregation: str = "fedavg",
    dense_output_layer: bool = False,
) -> dict[str, Any]: ...
