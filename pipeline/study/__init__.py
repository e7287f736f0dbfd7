"""The study's engine and stage drivers: the runner loop that drives any search strategy
(``runner``), its append-only checkpoint (``checkpoint``) and lock (``lock``), a search stage end to
end (``search_stage``), the champion (``champion``), the GA's sensitivity (``sensitivity``), the
report stage (``report_stage``, which builds the report of ``pipeline.report`` and logs it), and
what stage scripts share (``cli``, ``layout``). Import the module you need."""
