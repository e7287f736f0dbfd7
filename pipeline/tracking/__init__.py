"""MLflow: the store (``store``: one experiment per study, portable, SQLite inside ``mlruns/``), the runs of a
search (``observer``), and a network logged and registered as a model (``models``: the champion's)."""
