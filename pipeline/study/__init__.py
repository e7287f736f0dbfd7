"""The study: the runner loop that drives any search strategy (``runner``), its append-only
checkpoint (``checkpoint``), a search stage end to end (``search_stage``), the champion
(``champion``), the report (``report``), and what stage scripts share (``cli``). Import the module
you need: ``report`` must stay free of torch, Lightning and MLflow's training stack."""
