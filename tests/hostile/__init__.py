"""The hostile-input corpus: generated attacks on a real listener, each with the answer it must get.

:mod:`tests.hostile.corpus` lists the cases, :mod:`tests.hostile.runner` runs them against a
``cxr-node serve`` while a good sender sends a normal study, :mod:`tests.hostile.test_corpus`
checks every answer and what the node looked like afterwards (memory, spool, still serving).
"""
