"""The benchmark harness behind ``zmqcomm bench``: zmqcomm side by side with raw pyzmq and
pyzmq+CURVE, measured in one run with alternating rounds, written as JSON, Markdown and PNG.

Each section is a module with ``NAME``, ``TITLE`` and ``run(settings, progress, workdir)``
returning a JSON-ready dict; :mod:`zmqcomm.bench.runner` lists them in ``SECTIONS``. Nothing is
imported here, so worker processes load only what they measure.
"""
