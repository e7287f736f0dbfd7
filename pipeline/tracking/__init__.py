"""MLflow: the store (``store``: one experiment per study, portable, SQLite inside ``mlruns/``) and the runs of a search (``observer``)."""
