"""Trial runners and the search loop of the profiler: a real local model server (:mod:`~agent.profiling.local`,
:mod:`~agent.profiling.server`, :mod:`~agent.profiling.loadtest`), Kubernetes shadow trials
(:mod:`~agent.profiling.shadow`) and the driver that runs a planner's search through any runner
(:mod:`~agent.profiling.driver`)."""
