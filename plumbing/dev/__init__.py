"""Dev-only: the supervisor, the whole-stack launcher, the demo data and the dev push gateway
(`laiwang run`, `laiwang demo`, the test fixtures and the benchmarks).

No service or gateway process imports this package; production runs each process on its own
(`laiwang serve`, deploy/k8s). A unit test keeps it that way.
"""
