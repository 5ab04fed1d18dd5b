"""Trial runners and the search loop of the profiler: a real local model server (:mod:`~agent.profiling.local`,
:mod:`~agent.profiling.server`, :mod:`~agent.profiling.loadtest`), Kubernetes shadow trials
(:mod:`~agent.profiling.shadow`, their load generator :mod:`~agent.profiling.loadgen`, their results from Kafka
:mod:`~agent.profiling.results`, and :mod:`~agent.profiling.live`, what the agent enters to run them) and the
driver that runs a planner's search through any runner, with limits shared across searches
(:mod:`~agent.profiling.driver`)."""
