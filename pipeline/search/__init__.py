"""Search methods as ask/tell strategies (``protocol``), one module each, registered by name in
``registry`` (``python -m pipeline methods`` lists them): the genetic algorithm (``ga``), grid search
(``grid``), random search (``random``), Optuna's samplers (``tpe``, any other through
``tpe.OptunaSearch``) and Population Based Training (``pbt``); ``fidelity`` schedules their
proposals' rungs. A strategy proposes and learns from scores; it never trains (the evaluator does)."""
