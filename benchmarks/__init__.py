"""autoaccel's benchmarks: the measurements behind the tables in ``reports/bench/`` that the README cites.

They run from a source checkout (this package is not in the wheel): ``python -m autoaccel bench NAME [args]``,
with every benchmark listed once in ``benchmarks.registry``. Their settings are the ``bench`` config group
(``benchmarks/conf/bench/``), composed beside a search configuration: ``benchmarks.config``.
"""
