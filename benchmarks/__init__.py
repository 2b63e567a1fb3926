"""The benchmark harness of a mindtrace checkout; not installed with the package, not packed in the Bento.

- ``python -m benchmarks serve``: this service beside plain FastAPI and ``mlflow models serve`` under wrk
  (``serve``, ``servers``, ``bodies``, ``wrk``, ``process``; the rivals in ``rivals``, ``pyfunc`` and
  ``noop``; the report in ``report`` and ``charts``);
- ``python -m benchmarks train`` and ``formats``: training and the forward pass, without a server
  (``offline``).

``mindtrace bench ...`` runs the same commands when started in the checkout. Its dependencies are the
``bench`` extra (``pip install -e '.[bench]'``) and wrk (``apt-get install wrk``). Targets are reported,
never asserted: a noisy machine must not fail anything. ``results/`` holds the published figures.
"""
