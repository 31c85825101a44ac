"""The Flower engine: a ServerApp running feddmmr's run loop, a ClientApp running the local
engines' update on each SuperNode's own users, and the simulation that runs both on one machine.

    messages.py    what server and clients send each other
    engine.py      FlowerEngine: routes a round's users to nodes, collects and aggregates replies
    server_app.py  ServerApp (`flwr run`: feddmmr.flower.server_app:app)
    client_app.py  ClientApp (`flwr run`: feddmmr.flower.client_app:app)
    node_data.py   which users a node holds, from its node config
    run_config.py  TrainConfig <-> Flower run config
    simulation.py  run_flower_simulation (`feddmmr train --engine flower`)
    partition.py   split a dataset into per-node data files for a deployment

The package itself imports nothing: flwr and ray take seconds to import, and partition.py,
node_data.py and run_config.py do not need them.
"""
