"""The biology: the four cell populations and their rules, the model's fields, the
patient, the therapy timeline, outcomes, and the default parameters as data tables
(``data/``). It builds on the engine and never reads or writes files other than its
own tables."""
