"""Search methods as ask/tell strategies (``protocol``), by name in ``registry``: the genetic
algorithm (``ga``), grid search (``grid``) and random search (``random``). numpy, scipy and
scikit-learn only: a strategy never trains."""
