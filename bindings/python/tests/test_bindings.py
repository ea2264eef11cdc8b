"""Tests of the lastmile_fl extension module (run: python -m unittest discover bindings/python/tests).

They check what a Flower app relies on: a server and clients driven by hand
through encoded messages reproduce the in-process simulation exactly, the
byte predictions are the message lengths, a client that trains in numpy can
hand back its factors, and every bad input is a LastmileError.
"""

import unittest

import numpy as np

import lastmile_fl as fl

SIZES = [64, 32, 10]
SEED = 3


def federation():
    return fl.digits_federation(1.0, 4, SEED)


def drive(server, client, clients, rounds, reverse=False):
    """Runs `rounds` rounds by hand; returns per-round accuracies on nothing (None)."""
    for _ in range(rounds):
        plan = server.begin_round()
        updates = []
        for k, payload in zip(plan.clients, plan.payloads):
            x, y = clients[k]
            seed = fl.client_seed(SEED, plan.round, k)
            update, _, _ = client.train(payload, x, y, seed)
            updates.append(update)
        if reverse:
            updates.reverse()
        server.finish_round(updates)


class DigitsFederation(unittest.TestCase):
    def test_partitions_cover_the_training_rows(self):
        clients, (xt, yt) = federation()
        self.assertEqual(len(clients), 4)
        rows = sum(len(y) for _, y in clients)
        self.assertEqual(rows + len(yt), 1797)
        for x, y in clients:
            self.assertEqual(x.dtype, np.float32)
            self.assertEqual(y.dtype, np.int64)
            self.assertEqual(x.shape, (len(y), 64))
        # standardised on the training rows: mean ~0 over all clients
        allx = np.concatenate([x for x, _ in clients])
        self.assertLess(np.abs(allx.mean(axis=0)).max(), 1e-4)

    def test_bad_arguments_raise(self):
        with self.assertRaises(fl.LastmileError):
            fl.digits_federation(-1.0, 4, 0)
        with self.assertRaises(fl.LastmileError):
            fl.digits_federation(1.0, 0, 0)


class ServerAndClient(unittest.TestCase):
    def test_by_hand_equals_simulate_in_any_reply_order(self):
        clients, test = federation()
        common = dict(strategy="collective", keep_ratio=0.25, seed=SEED)
        server = fl.Server(SIZES, len(clients), 3, **common)
        client = fl.Client(SIZES, local_epochs=1, batch_size=16, learning_rate=0.05)
        drive(server, client, clients, 2, reverse=True)
        report = fl.simulate(
            SIZES, clients, test, 2, 3, local_epochs=1, batch_size=16,
            learning_rate=0.05, **common,
        )
        self.assertEqual(server.rounds_done, 2)
        self.assertEqual(server.evaluate(*test), report["rounds"][-1]["test_accuracy"])
        self.assertGreater(report["rounds"][-1]["test_accuracy"], report["initial_accuracy"])

    def test_predicted_bytes_are_the_message_lengths(self):
        clients, _ = federation()
        for strategy in ["full", "top-n", "unbiased", "collective"]:
            server = fl.Server(SIZES, len(clients), 2, strategy=strategy, keep_ratio=0.5)
            client = fl.Client(SIZES)
            plan = server.begin_round()
            for k, p, down, up in zip(plan.clients, plan.payloads, plan.expected_down, plan.expected_up):
                self.assertEqual(len(p), down)
                self.assertEqual(fl.expected_update_len(p), up)
                update, _, _ = client.train(p, *clients[k], 0)
                self.assertEqual(len(update), up, strategy)

    def test_params_are_numpy_weights_in_in_out_layout(self):
        server = fl.Server(SIZES, 2, 1)
        params = server.params()
        self.assertEqual(params["layers.0.weight"].shape, (64, 32))
        self.assertEqual(params["layers.1.bias"].shape, (10,))
        self.assertEqual(params["layers.0.weight"].dtype, np.float32)

    def test_protocol_errors_raise(self):
        clients, _ = federation()
        server = fl.Server(SIZES, len(clients), 2)
        with self.assertRaises(fl.LastmileError):
            server.finish_round([])  # no round in progress
        plan = server.begin_round()
        client = fl.Client(SIZES)
        update, _, _ = client.train(plan.payloads[0], *clients[plan.clients[0]], 0)
        with self.assertRaisesRegex(fl.LastmileError, "clients that sent"):
            server.finish_round([update])  # one client missing
        with self.assertRaisesRegex(fl.LastmileError, "clients that sent"):
            server.finish_round([update, update])  # the same client twice
        with self.assertRaises(fl.LastmileError):
            server.finish_round([b"not a message", update])

    def test_bad_configuration_and_data_raise(self):
        with self.assertRaisesRegex(fl.LastmileError, "clients_per_round"):
            fl.Server(SIZES, 3, 4)
        with self.assertRaisesRegex(fl.LastmileError, "strategy name"):
            fl.Server(SIZES, 3, 1, strategy="best")
        with self.assertRaisesRegex(fl.LastmileError, "keep_ratios"):
            fl.Server(SIZES, 3, 1, keep_ratio=[0.5, 0.5])
        with self.assertRaisesRegex(fl.LastmileError, "learning_rate"):
            fl.Client(SIZES, learning_rate=-1.0)
        clients, _ = federation()
        server = fl.Server(SIZES, len(clients), 1)
        payload = server.begin_round().payloads[0]
        x, y = clients[0]
        client = fl.Client(SIZES)
        with self.assertRaises(fl.LastmileError):
            client.train(payload, x[:, :10].copy(), y, 0)  # wrong width
        with self.assertRaises(fl.LastmileError):
            client.train(payload, x, y[:-1], 0)  # a label short
        with self.assertRaises(fl.LastmileError):
            client.train(payload, x, np.full_like(y, 12), 0)  # label out of range
        with self.assertRaises(fl.LastmileError):
            client.train(payload, np.asfortranarray(x), y, 0)  # not C-contiguous
        with self.assertRaises(fl.LastmileError):
            fl.Client([64, 16, 10]).train(payload, x, y, 0)  # another architecture
        with self.assertRaises(fl.LastmileError):
            client.train(payload[:-3], x, y, 0)  # truncated message


class OwnFrameworkClient(unittest.TestCase):
    """A client that trains the factors itself (here: numpy) and encodes them."""

    def test_untouched_factors_reaggregate_to_the_sharded_model(self):
        # Top-n with keep ratio 1 keeps every triplet with multiplier 1, so
        # sending the received factors back unchanged leaves the model as it was.
        clients, test = federation()
        server = fl.Server(SIZES, len(clients), 2, strategy="top-n", keep_ratio=1.0)
        before = server.params()
        plan = server.begin_round()
        updates = []
        for p in plan.payloads:
            d = fl.decode_shard(p)
            layers = {k: (v["a"], v["b"]) for k, v in d["layers"].items()}
            updates.append(fl.encode_update(p, 10, layers, d["dense"]))
        server.finish_round(updates)
        after = server.params()
        for k in before:
            np.testing.assert_allclose(after[k], before[k], atol=2e-5, err_msg=k)

    def test_factors_multiply_to_the_layer_weight(self):
        server = fl.Server(SIZES, 2, 1, strategy="top-n", keep_ratio=1.0)
        w = server.params()["layers.0.weight"]  # [in, out]
        d = fl.decode_shard(server.begin_round().payloads[0])
        layer = d["layers"]["layers.0.weight"]
        self.assertEqual(layer["layout"], "InOut")
        np.testing.assert_allclose(layer["a"] @ layer["b"], w.T, atol=2e-5)

    def test_numpy_sgd_step_lowers_the_loss_and_encodes(self):
        clients, _ = federation()
        server = fl.Server([64, 10], len(clients), 1, strategy="unbiased", keep_ratio=0.5)
        plan = server.begin_round()
        p = plan.payloads[0]
        x, y = clients[plan.clients[0]]
        d = fl.decode_shard(p)
        f = d["layers"]["layers.0.weight"]
        a, b, bias = f["a"].copy(), f["b"].copy(), d["dense"]["layers.0.bias"].copy()

        def loss_and_grads(a, b, bias):
            z = x @ (a @ b).T + bias
            z -= z.max(axis=1, keepdims=True)
            p_ = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
            loss = -np.log(p_[np.arange(len(y)), y]).mean()
            g = p_.copy()
            g[np.arange(len(y)), y] -= 1
            g /= len(y)  # dL/dz [n, out]
            gw = g.T @ x  # [out, in]
            return loss, gw @ b.T, a.T @ gw, g.sum(axis=0)

        l0, ga, gb, gbias = loss_and_grads(a, b, bias)
        a, b, bias = a - 0.1 * ga, b - 0.1 * gb, bias - 0.1 * gbias
        l1, _, _, _ = loss_and_grads(a, b, bias)
        self.assertLess(l1, l0)
        update = fl.encode_update(
            p, len(y), {"layers.0.weight": (a.astype(np.float32), b.astype(np.float32))},
            {"layers.0.bias": bias.astype(np.float32)},
        )
        self.assertEqual(len(update), fl.expected_update_len(p))
        server.finish_round([update])

    def test_missing_extra_or_misshapen_entries_raise(self):
        server = fl.Server(SIZES, 2, 1, strategy="unbiased", keep_ratio=0.5)
        p = server.begin_round().payloads[0]
        d = fl.decode_shard(p)
        layers = {k: (v["a"], v["b"]) for k, v in d["layers"].items()}
        dense = d["dense"]
        with self.assertRaisesRegex(fl.LastmileError, "layers"):
            fl.encode_update(p, 1, dict(list(layers.items())[:1]), dense)
        with self.assertRaisesRegex(fl.LastmileError, "dense"):
            fl.encode_update(p, 1, layers, {**dense, "extra": np.zeros(1, np.float32)})
        a, b = layers["layers.0.weight"]
        with self.assertRaisesRegex(fl.LastmileError, "shape"):
            fl.encode_update(p, 1, {**layers, "layers.0.weight": (a[:, :-1].copy(), b)}, dense)
        bad = a.copy()
        bad[0, 0] = np.nan
        with self.assertRaises(fl.LastmileError):
            fl.encode_update(p, 1, {**layers, "layers.0.weight": (bad, b)}, dense)


if __name__ == "__main__":
    unittest.main()
