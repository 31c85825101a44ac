"""The Flower engine: a ServerApp running feddmmr's run loop, a ClientApp running the local
engines' update on each SuperNode's own users, and the simulation that runs both on one machine.

    messages.py    what server and clients send each other
    engine.py      FlowerEngine: routes a round's users to nodes, collects and aggregates replies
    server_app.py  ServerApp (`flwr run`: feddmmr.engines.flower.server_app:app)
    client_app.py  ClientApp (`flwr run`: feddmmr.engines.flower.client_app:app)
    node_data.py   which users a node holds, from its node config
    run_config.py  TrainConfig <-> Flower run config
    simulation.py  run_flower_simulation (`feddmmr train --engine flower`)
    partition.py   split a dataset into per-node data files for a deployment
"""

__all__ = ["run_flower_simulation"]


def __getattr__(name: str):
    # Imported on first use: flwr and ray take seconds to import, and partition.py,
    # node_data.py and run_config.py do not need them.
    if name == "run_flower_simulation":
        from feddmmr.engines.flower.simulation import run_flower_simulation

        return run_flower_simulation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
