"""The report and its statistics: ``build`` writes a study's report (Markdown, a self-contained
HTML page, plots, curve data and metrics) from the search stages' results and the champion's;
``content`` is the block model both pages render from; ``statistics`` the tests behind its
verdicts (frequentist and Bayesian); ``search_space_views`` the search-space section (every
evaluation, fANOVA importance, slice and parallel-coordinates plots); ``sensitivity_table`` the GA
sensitivity section. Nothing here trains or imports torch, Lightning or MLflow: the stage driver
that logs the report is ``pipeline.study.report_stage``."""
